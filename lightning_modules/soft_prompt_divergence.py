"""SoftPromptDivergence: train a soft prompt that makes a frozen model pair disagree.

Thin glue: the objective is :func:`finediff.divergence.pair_divergence`, the prompt is
:class:`finediff.soft_prompt.SoftPrompt`; this module only wires them to Lightning.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict
from typing import Any, Optional

import lightning as L
import torch

from finediff import names
from finediff.answers import AnswerCache, AnswerSettings
from finediff.distributed import average_gradient, shard_pair
from finediff.divergence import base_shift_divergence, batch_divergence
from finediff.errors import FinediffError
from finediff.hard_prompts import allowed_tokens
from finediff.pipeline import Objective, SoftPromptSettings
from finediff.pipeline.settings import WARMUP_STEPS
from finediff.models import ModelPair
from finediff.soft_prompt import SoftPrompt, apply_trainable, is_trainable, random_like

log = logging.getLogger(__name__)
# The frozen pair is in eval mode on purpose; Lightning's generic warning about it is noise.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class SoftPromptDivergence(L.LightningModule):
    """Maximise the divergence between the finetuned and base models over the finetuned
    model's answers (``positions="response"``, :mod:`finediff.answers`) or at the text
    positions (``"text"``).

    Args:
        pair: the frozen :class:`~finediff.models.ModelPair` (not a hyper-parameter; never
            saved in checkpoints).
        settings: the training settings, :class:`~finediff.pipeline.SoftPromptSettings`
            (each documented there); keyword arguments change single fields.
        seed: the run's seed (the prompt's start, the random-prompt baseline).
        answers: how the on-policy answers are made (default: ``settings.answers``; a
            benchmark or test may refresh them on another schedule).
    """

    def __init__(self, pair: ModelPair, settings: Optional[SoftPromptSettings] = None, *, seed: int = 0,
                 answers: Optional[AnswerSettings] = None, **changes: Any):
        """``settings`` (default: :class:`SoftPromptSettings`'s defaults, the one home of
        them) with ``changes`` applied: ``SoftPromptDivergence(pair, positions="response")``;
        Hydra passes the composed ``module`` group as keyword arguments."""
        super().__init__()
        base = asdict(settings) if settings is not None else {}
        s = SoftPromptSettings.of({**base, **changes})
        self.answers = answers or s.answers
        self.base_anchor = s.base_anchor
        self.train_answers = AnswerCache(self.answers)
        self.plain_answers = AnswerCache(AnswerSettings(self.answers.tokens, 1 << 30, faithful=self.answers.faithful))
        self.save_hyperparameters({**asdict(s), "seed": int(seed)})
        self.hparams["pair"] = pair.spec.as_dict()  # what it was trained on, not the weights
        self.pair = pair
        if s.gradient_checkpointing:
            pair.enable_gradient_checkpointing()
        embed = pair.base.get_input_embeddings()
        self.soft_prompt = SoftPrompt(
            embed, embed.weight.shape[0], s.num_soft_prompt_tokens, s.init, s.init_text, pair.tokenizer, int(seed),
            s.space, self.allowed if s.space == "tokens" else None)
        self.n_trainable, self.n_frozen = apply_trainable(self)
        log.info("trainable parameters: %s (soft prompt %d x %d, %s); frozen: %s",
                 f"{self.n_trainable:,}", s.num_soft_prompt_tokens, self.soft_prompt.weight.shape[1], s.space,
                 f"{self.n_frozen:,}")
        # The frozen pair is not part of checkpoints; loading one restores the prompt only.
        self.strict_loading = False

    @property
    def sharded(self) -> bool:
        """The pair's blocks are sharded across processes (trainer=fsdp)."""
        return getattr(self, "_sharded", False)

    def configure_model(self) -> None:
        """Under ``trainer=fsdp`` (Lightning's ModelParallelStrategy, FSDP2) shard the frozen
        pair's blocks over the data-parallel mesh; otherwise nothing."""
        mesh = getattr(self, "_device_mesh", None)
        if self.pair.placement and (mesh is not None or self.trainer.world_size > 1):
            raise FinediffError(f"model.placement={self.pair.placement} places the pair in one process; "
                                "it does not combine with several processes (trainer.devices=1)")
        if mesh is None or self.sharded:
            return
        if self.hparams.positions != "text":
            raise FinediffError("trainer=fsdp trains on module.positions=text only (on-policy answers would "
                                "need every process to generate in step); set module.positions=text")
        n = shard_pair(self.pair, mesh["data_parallel"])
        self._sharded = True
        log.info("sharded %d blocks of the pair over %d processes", n, mesh["data_parallel"].size())

    def on_after_backward(self) -> None:
        if self.sharded:  # the prompt is replicated: average its gradient like data parallelism does
            average_gradient(self.soft_prompt.weight)

    def train(self, mode: bool = True):
        super().train(mode)
        self.pair.train(False)  # frozen models stay in eval mode
        return self

    def model_step(self, batch: dict, prompt: Optional[torch.Tensor], answers: Optional[AnswerCache] = None,
                   step: int = 0, shift: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The divergence on ``batch`` with ``prompt``; on the answer objective over the
        finetuned model's answers given with that prompt (from ``answers`` when given,
        else generated now). With ``shift``, ``(divergence, base shift)``."""
        hp = self.hparams
        if hp.positions == "response":
            cache = answers or AnswerCache(AnswerSettings(self.answers.tokens, 1, self.answers.temperature,
                                                          faithful=self.answers.faithful))
            batch = cache.batch(self.pair, batch, prompt, step)
        if shift:
            return base_shift_divergence(self.pair, batch, prompt, hp.divergence, hp.temperature, hp.chunk_size)
        return batch_divergence(self.pair, batch, prompt, hp.divergence, hp.temperature, hp.chunk_size)

    def refresh_answers(self, prompt: torch.Tensor) -> bool:
        """Every training text's answer with the current prompt, many texts per ``generate``
        call (the texts come from the training loader; False when its dataset is not a list
        of texts to batch, and the answers are then made batch by batch as they come)."""
        loader = getattr(self.trainer, "train_dataloader", None) if self._trainer is not None else None
        items, collate_fn = getattr(loader, "dataset", None), getattr(loader, "collate_fn", None)
        if not isinstance(items, list) or not items or not isinstance(items[0], (list, tuple)) or collate_fn is None:
            return False
        self.train_answers.refresh(self.pair, items, collate_fn, prompt, self.global_step)
        return True

    def learned_prompt(self) -> torch.Tensor:
        """The prompt the models see: the vectors, or (``space=tokens``) each position's
        expected token embedding."""
        return self.soft_prompt()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        prompt = self.learned_prompt()
        if self.hparams.positions == "response" and self.train_answers.due(self.global_step):
            self.refresh_answers(prompt)
        bs = batch["input_ids"].shape[0]
        if self.base_anchor:
            divergence, shift = self.model_step(batch, prompt, self.train_answers, self.global_step, shift=True)
            self.log(names.TRAIN_BASE_SHIFT, shift, batch_size=bs)
            loss = self.base_anchor * shift - divergence
        else:
            divergence = self.model_step(batch, prompt, self.train_answers, self.global_step)
            loss = -divergence
        self.log(names.TRAIN_DIVERGENCE, divergence, prog_bar=True, batch_size=bs)
        return loss

    @property
    def allowed(self) -> torch.Tensor:
        """The tokens a prompt vector may be projected to (as the hard prompts do)."""
        if getattr(self, "_allowed", None) is None:
            self._allowed = allowed_tokens(self.pair.tokenizer, self.pair.base.get_input_embeddings().weight.shape[0])
        return self._allowed

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        prompt = self.learned_prompt()
        bs = batch["input_ids"].shape[0]
        divergence, shift = self.model_step(batch, prompt, shift=True)
        results = {
            names.VAL_DIVERGENCE: divergence,
            names.VAL_BASE_SHIFT: shift,
            names.VAL_DIVERGENCE_NO_PROMPT: self.model_step(batch, None, self.plain_answers),
            names.VAL_DIVERGENCE_RANDOM_PROMPT: self.model_step(
                batch, random_like(prompt, seed=self.hparams.seed + 1)),
        }
        for key, value in results.items():
            self.log(key, value, prog_bar=key == names.VAL_DIVERGENCE, batch_size=bs, sync_dist=True)

    def configure_optimizers(self) -> dict:
        params = [p for n, p in self.named_parameters() if is_trainable(n)]
        opt = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=0.0)
        # linear warm-up over WARMUP_STEPS: factor (step + 1) / WARMUP_STEPS, then 1
        warmup = WARMUP_STEPS
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warmup, total_iters=warmup - 1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:
            checkpoint["state_dict"] = {k: v for k, v in state.items() if is_trainable(k)}
        # The global RNG draws each epoch's shuffle: restoring it lets a resumed run see the
        # same batches as an uninterrupted one.
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        # the on-policy answers in use: a resumed run scores the same ones until they are refreshed
        checkpoint["answer_cache"] = self.train_answers.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("torch_rng_state")
        if "answer_cache" in checkpoint:
            self.train_answers.load_state_dict(checkpoint["answer_cache"])

    def on_train_epoch_start(self) -> None:
        # A resumed run first closes the checkpoint's epoch (its loader iterator draws from the
        # RNG), then opens the next: restore the state at each epoch start until a batch runs.
        if getattr(self, "_rng_to_restore", None) is not None:
            torch.set_rng_state(self._rng_to_restore)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._rng_to_restore = None

    def objective(self) -> Objective:
        """The objective the prompt was trained with (the hard prompts optimise it too)."""
        hp = self.hparams
        return Objective(str(hp.divergence), float(hp.temperature), int(hp.chunk_size or 0), int(hp.seed),
                         str(hp.positions), self.answers, self.soft_prompt.start.detach().float().cpu())

    def prompt_record(self) -> dict:
        """What ``soft_prompt.pt`` holds: the prompt and what is needed to reuse it.

        Only tensors, strings and numbers, so ``torch.load(..., weights_only=True)`` works.
        """
        hp = self.hparams
        with torch.no_grad():
            prompt = self.learned_prompt()
        return {
            "prompt": prompt.detach().float().cpu().clone(),
            "num_soft_prompt_tokens": int(hp.num_soft_prompt_tokens),
            "hidden_size": int(self.soft_prompt.hidden_size),
            "init": str(hp.init),
            "divergence": str(hp.divergence),
            "temperature": float(hp.temperature),
            "pair": dict(hp.pair),
            names.GLOBAL_STEP: int(self.global_step),
            "positions": str(hp.positions),
            "max_new_tokens": int(hp.max_new_tokens),
            "start": self.soft_prompt.start.detach().float().cpu().clone(),
            "space": str(hp.get("space", "vectors")),
            "faithful": bool(hp.get("faithful", False)),
        }
