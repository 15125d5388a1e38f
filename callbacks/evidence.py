"""End-of-fit callbacks that turn the trained soft prompt into evidence:
``hard_prompts.jsonl`` and the divergent dataset (file names from :mod:`finediff.names`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L

from finediff import names
from finediff.data import collate
from finediff.divergent_dataset import GenerationConfig, dataset_prompts, generate_dataset, rank_texts, save_dataset
from finediff.hard_prompts import find_hard_prompts
from finediff.io import write_jsonl
from finediff.metrics import AGGREGATES

log = logging.getLogger(__name__)


def _texts(datamodule, split: str) -> list[tuple[str, tuple]]:
    dataset = datamodule.train_set if split == "train" else datamodule.val_set
    return list(dataset.items)


def _batches(datamodule, split: str, n: int, batch_size: int) -> list[dict]:
    items = [parts for _, parts in _texts(datamodule, split)][: n * batch_size]
    pad, max_len = datamodule.tokenizer.pad_token_id, datamodule.hparams.max_length
    return [collate(items[i:i + batch_size], pad, max_len) for i in range(0, len(items), batch_size)]


class HardPromptCallback(L.Callback):
    """Find hard prompts from the learned soft prompt; write ``hard_prompts.jsonl``.

    Args:
        output_dir: the run's output folder.
        methods: any of ``projection``, ``pez``, ``text``, ``gcg``.
        fluency_weight: weight of the base model's log-perplexity of the prompt.
        pez_steps / gcg_steps / top_k / n_candidates: search budgets.
        fluent_top: GCG swaps only to the tokens the base model ranks this high at each
            position (0: any allowed token).
        train_batches / eval_batches: how many batches of train / held-out texts to use.
        init_texts / n_starts / init_tokens: how many training texts are ranked by their
            divergence alone, how many of the highest are tried as natural-language starts
            (method ``text``), and how many of their first tokens.
    """

    def __init__(self, output_dir: str, methods=("projection", "pez", "text", "gcg"), fluency_weight: float = 0.02,
                 pez_steps: int = 20, gcg_steps: int = 4, top_k: int = 32, n_candidates: int = 12,
                 fluent_top: int = 128, train_batches: int = 4, eval_batches: int = 4, batch_size: int = 4,
                 init_texts: int = 64, n_starts: int = 12, init_tokens: int = 16):
        self.output_dir = Path(output_dir)
        self.kw = dict(methods=tuple(methods), fluency_weight=fluency_weight, pez_steps=pez_steps,
                       gcg_steps=gcg_steps, top_k=top_k, n_candidates=n_candidates, fluent_top=fluent_top,
                       n_starts=n_starts, init_tokens=init_tokens)
        self.n_train, self.n_eval, self.batch_size = train_batches, eval_batches, batch_size
        self.n_init = init_texts

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        hp = pl_module.hparams
        found = find_hard_prompts(
            pl_module.pair, pl_module.soft_prompt().detach(), _batches(dm, "train", self.n_train, self.batch_size),
            _batches(dm, "val", self.n_eval, self.batch_size), kind=hp.divergence, temperature=hp.temperature,
            chunk_size=hp.chunk_size, seed=hp.seed, init_texts=tuple(t for t, _ in _texts(dm, "train")[: self.n_init]),
            **self.kw)
        write_jsonl(self.output_dir / names.HARD_PROMPTS_FILE, [h.as_dict() for h in found])
        for h in found:
            log.info("hard prompt [%s] %r: divergence %.4f (no prompt %.4f), perplexity %.1f",
                     h.method, h.text, h.divergence, h.divergence_no_prompt, h.perplexity)
        for lg in trainer.loggers:
            if hasattr(lg, "log_table"):
                lg.log_table("hard_prompts", columns=["method", "text", "divergence", "perplexity"],
                             data=[[h.method, h.text, h.divergence, h.perplexity] for h in found])


class DivergentDatasetCallback(L.Callback):
    """Write ``divergent_dataset.pt`` / ``.jsonl`` from the hard prompts and the
    highest-divergence category texts.

    Args:
        output_dir: the run's output folder (``hard_prompts.jsonl`` is read from it).
        generation: the ``generation`` config block (max_length, num_generations_per_prompt,
            temperature, top_p).
        n_hard_prompts: best hard prompts used.
        texts_per_hard_prompt: highest-divergence texts each hard prompt is put in front of.
        n_texts: highest-divergence texts used alone.
        max_scored_texts: category texts scored to find the highest-divergence ones.
        positions: how texts are scored (``response``: over the finetuned model's greedy
            answer; ``text``: over the text itself).
        response_tokens: answer length scored with ``positions=response``.
    """

    def __init__(self, output_dir: str, generation: dict, n_hard_prompts: int = 2, texts_per_hard_prompt: int = 3,
                 n_texts: int = 5, max_scored_texts: int = 200, batch_size: int = 16, positions: str = "response",
                 response_tokens: int = 32):
        self.output_dir = Path(output_dir)
        self.generation = GenerationConfig(**dict(generation))
        self.n_hard, self.per_hard, self.n_texts = n_hard_prompts, texts_per_hard_prompt, n_texts
        self.max_scored, self.batch_size = max_scored_texts, batch_size
        self.positions, self.response_tokens = positions, response_tokens

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        texts = [t for t, _ in _texts(dm, "val") + _texts(dm, "train")][: self.max_scored]
        ranked = [t for _, t in rank_texts(pl_module.pair, texts, self.positions, self.response_tokens,
                                           dm.hparams.max_length)]
        hard_file = self.output_dir / names.HARD_PROMPTS_FILE
        hard = [json.loads(line)["text"] for line in hard_file.read_text().splitlines()] if hard_file.exists() else []
        prompts = dataset_prompts(hard, ranked, self.n_hard, self.per_hard, self.n_texts)
        records = generate_dataset(pl_module.pair, prompts, self.generation, seed=pl_module.hparams.seed,
                                   batch_size=self.batch_size)
        save_dataset(records, self.output_dir, names.DIVERGENT_DATASET_PT, names.DIVERGENT_DATASET_JSONL)
        aggregates = {}
        for key, metric_cls in AGGREGATES.items():
            metric = metric_cls()
            metric.update(records)
            aggregates[key] = float(metric.compute())
        log.info("divergent dataset: %d records, %s", len(records), aggregates)
        for lg in trainer.loggers:
            lg.log_metrics(aggregates, step=trainer.global_step)
            if hasattr(lg, "log_table"):
                lg.log_table("divergent_dataset", columns=["prompt", "generation_1", "generation_2", "kl_divergence",
                                                           "token_disagreement_rate", "vocab_jaccard_similarity"],
                             data=[[r["prompt"], r["generation_1"], r["generation_2"], r["metrics"]["kl_divergence"],
                                    r["metrics"]["token_disagreement_rate"], r["metrics"]["vocab_jaccard_similarity"]]
                                   for r in records[:200]])
