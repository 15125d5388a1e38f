"""DivergenceTrainer: the seed's trainer, a thin face over finediff's LightningModule and
evidence pipeline (the same code ``train.py`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import lightning as L

from datamodules import CategoryTextDataModule
from config_schema import settings as config_settings
from finediff import names, pipeline
from finediff.divergent_dataset import GenerationConfig
from finediff.errors import FinediffError
from finediff.io import torch_save, write_jsonl
from finediff.metrics import dataset_means
from finediff.models import ModelPair, PairSpec
from lightning_modules import SoftPromptDivergence

# The seed's ``training`` keys and the LightningModule / Trainer arguments they set.
_MODULE_KEYS = {"num_soft_prompt_tokens": "num_soft_prompt_tokens", "learning_rate": "learning_rate",
                "gradient_checkpointing": "gradient_checkpointing", "divergence": "divergence",
                "temperature": "temperature", "init": "init", "positions": "positions",
                "max_new_tokens": "max_new_tokens", "faithful": "faithful"}
_TRAINING_KEYS = set(_MODULE_KEYS) | {"batch_size", "num_epochs", "max_steps", "mixed_precision"}


def seed_generation(mapping: Optional[dict]) -> GenerationConfig:
    """The ``generation`` block as :class:`GenerationConfig` (finediff's keys, or the seed's),
    checked against its schema (an unknown key or a wrong type: one line naming it)."""
    generation = dict(mapping or {})
    if "max_length" in generation:  # the seed document's key for new tokens per generation (finediff: max_new_tokens)
        generation.setdefault("max_new_tokens", generation.pop("max_length"))
    return config_settings({"generation": generation}, "generation")


def _name(model, fallback: str) -> str:
    return str(getattr(getattr(model, "config", None), "name_or_path", "") or fallback)


class DivergenceTrainer:
    """Train a soft prompt that makes ``model_2`` (finetuned) diverge from ``model_1`` (base).

    Args:
        model_1: the base model (frozen).
        model_2: the finetuned model (frozen); same tokenizer and hidden size.
        tokenizer: their shared tokenizer.
        config: the seed's experiment config: ``training`` (num_soft_prompt_tokens,
            learning_rate, batch_size, num_epochs, max_steps, mixed_precision,
            gradient_checkpointing, divergence, temperature, init, positions, max_new_tokens,
            faithful), ``generation`` (max_new_tokens,
            or the seed's max_length for it; num_generations_per_prompt, temperature, top_p), ``data`` (categories,
            max_texts_per_category), ``output_dir``,
            ``evidence`` (finediff's evidence settings), ``seed``.
        tracker: an :class:`~finediff_api.tracking.ExperimentTracker` to log to (optional).
    """

    def __init__(self, model_1, model_2, tokenizer, config: Optional[dict] = None, tracker=None):
        self.config = dict(config or {})
        training = dict(self.config.get("training") or {})
        unknown = sorted(set(training) - _TRAINING_KEYS)
        if unknown:
            raise FinediffError(f"unknown training setting {unknown[0]!r}; known: {', '.join(sorted(_TRAINING_KEYS))}")
        self.training, self.tracker = training, tracker
        self.seed = int(self.config.get("seed", 0))
        self.output_dir = Path(self.config.get("output_dir") or "outputs")
        spec = PairSpec(base=_name(model_1, "model_1"), finetuned=_name(model_2, "model_2"))
        self.pair = ModelPair(model_1, model_2, tokenizer, spec)
        data = dict(self.config.get("data") or {})
        self.datamodule = CategoryTextDataModule(
            categories=data.get("categories", ["sandbagging"]), max_texts_per_category=data.get("max_texts_per_category",
                                                                                              1000),
            batch_size=training.get("batch_size", 4), seed=self.seed, tokenizer=tokenizer)
        L.seed_everything(self.seed, workers=True)
        self.module = SoftPromptDivergence(self.pair, seed=self.seed,
                                           **{v: training[k] for k, v in _MODULE_KEYS.items() if k in training})

    def train(self, train_dataloader: Optional[Iterable] = None) -> dict[str, float]:
        """Train the prompt on the config's categories (held-out validation included), or on
        ``train_dataloader`` (batches of ``input_ids``, ``attention_mask`` and optional
        ``prompt_pos``, as :func:`finediff.data.collate` makes them). Returns the metrics."""
        precision = self.training.get("mixed_precision", False)
        precision = ("bf16-mixed" if precision is True else precision) or "32-true"
        trainer = L.Trainer(max_steps=self.training.get("max_steps", -1),
                            max_epochs=self.training.get("num_epochs", 10 if "max_steps" not in self.training else None),
                            accelerator="auto", devices=1, precision=precision,
                            logger=self.tracker.logger if self.tracker else False, enable_checkpointing=False,
                            enable_model_summary=False, num_sanity_val_steps=0, gradient_clip_val=1.0)
        if train_dataloader is None:
            trainer.fit(self.module, datamodule=self.datamodule)
            trainer.validate(self.module, datamodule=self.datamodule, verbose=False)  # the final prompt's numbers
        else:
            trainer.fit(self.module, train_dataloaders=train_dataloader)
        torch_save(self.output_dir / names.SOFT_PROMPT_FILE, self.module.prompt_record())
        return {k: float(v) for k, v in trainer.callback_metrics.items()}

    def generate_divergent_dataset(self, output_file: Optional[str] = None) -> list[dict]:
        """Hard prompts from the trained prompt, then the divergent dataset (the pipeline's
        two steps); the records in the seed's format, highest ``kl_divergence`` first,
        written to ``output_file`` (``.pt``) and a ``.jsonl`` beside it."""
        settings = config_settings(self.config, "evidence")
        generation = seed_generation(self.config.get("generation"))
        texts = self.datamodule.texts()
        hard = pipeline.hard_prompts(self.pair, self.module.soft_prompt().detach(), texts, settings.hard_prompts,
                                     self.module.objective())
        records = pipeline.divergent_dataset(self.pair, texts.val + texts.train, [h.text for h in hard],
                                             settings.divergent_dataset, generation, self.seed,
                                             max_length=texts.max_length)
        rows = [r.as_dict() for r in records]
        if output_file:
            path = Path(output_file)
            torch_save(path, rows)
            write_jsonl(path.with_suffix(".jsonl"), rows)
        if self.tracker:
            self.tracker.log_metrics(dataset_means(records))
        return rows
