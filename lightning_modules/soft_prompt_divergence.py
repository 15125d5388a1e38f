"""SoftPromptDivergence: train a soft prompt that makes a frozen model pair disagree.

Thin glue: the objective is :func:`finediff.divergence.pair_divergence`, the prompt is
:class:`finediff.soft_prompt.SoftPrompt`; this module only wires them to Lightning.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional

import lightning as L
import torch

from finediff import names
from finediff.divergence import pair_divergence, parse_kind
from finediff.errors import FinediffError, check_number
from finediff.pipeline import Objective
from finediff.models import ModelPair
from finediff.soft_prompt import SoftPrompt, apply_trainable, is_trainable, random_like

log = logging.getLogger(__name__)
# The frozen pair is in eval mode on purpose; Lightning's generic warning about it is noise.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class SoftPromptDivergence(L.LightningModule):
    """Maximise the divergence between the finetuned and base models at the text positions.

    Args:
        pair: the frozen :class:`~finediff.models.ModelPair` (not a hyper-parameter; never
            saved in checkpoints).
        num_soft_prompt_tokens: virtual tokens ``P``.
        init: ``text``, ``vocab`` or ``random`` (see :class:`~finediff.soft_prompt.PromptInit`).
        init_text: text for ``init=text``.
        divergence: ``kl_ft_base``, ``kl_base_ft``, ``symmetric_kl`` or ``jsd``.
        temperature: logits are divided by it before ``log_softmax``.
        chunk_size: positions per chunk in the divergence (bounds vocabulary-sized memory).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps, then constant.
        gradient_checkpointing: recompute the frozen models' layers in backward.
        seed: seed of the prompt init and of the random-prompt baseline.
    """

    def __init__(
        self,
        pair: ModelPair,
        num_soft_prompt_tokens: int = 8,
        init: str = "vocab",
        init_text: Optional[str] = None,
        divergence: str = "kl_ft_base",
        temperature: float = 1.0,
        chunk_size: Optional[int] = 256,
        learning_rate: float = 1e-2,
        weight_decay: float = 0.0,
        warmup_steps: int = 10,
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        parse_kind(divergence)
        check_number("module.learning_rate", learning_rate, float, minimum=0.0)
        check_number("module.weight_decay", weight_decay, float, minimum=0.0)
        check_number("module.warmup_steps", warmup_steps, int, minimum=0)
        check_number("module.temperature", temperature, float)
        if temperature <= 0:
            raise FinediffError(f"module.temperature must be > 0, got {temperature}")
        if chunk_size is not None:
            check_number("module.chunk_size", chunk_size, int, minimum=0)
        self.save_hyperparameters(ignore=["pair"])
        self.hparams["pair"] = pair.spec.as_dict()  # what it was trained on, not the weights
        self.pair = pair
        if gradient_checkpointing:
            pair.enable_gradient_checkpointing()
        embed = pair.base.get_input_embeddings()
        self.soft_prompt = SoftPrompt(
            embed, embed.weight.shape[0], num_soft_prompt_tokens, init, init_text, pair.tokenizer, seed
        )
        self.n_trainable, self.n_frozen = apply_trainable(self)
        log.info("trainable parameters: %s (soft prompt %d x %d); frozen: %s",
                 f"{self.n_trainable:,}", num_soft_prompt_tokens, self.soft_prompt.weight.shape[1],
                 f"{self.n_frozen:,}")
        # The frozen pair is not part of checkpoints; loading one restores the prompt only.
        self.strict_loading = False

    def train(self, mode: bool = True):
        super().train(mode)
        self.pair.train(False)  # frozen models stay in eval mode
        return self

    def model_step(self, batch: dict, prompt: Optional[torch.Tensor]) -> torch.Tensor:
        hp = self.hparams
        return pair_divergence(self.pair, batch["input_ids"], batch["attention_mask"], prompt,
                               hp.divergence, hp.temperature, hp.chunk_size, batch.get("prompt_pos"))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        divergence = self.model_step(batch, self.soft_prompt())
        bs = batch["input_ids"].shape[0]
        self.log(names.TRAIN_DIVERGENCE, divergence, prog_bar=True, batch_size=bs)
        return -divergence

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        prompt = self.soft_prompt()
        bs = batch["input_ids"].shape[0]
        results = {
            names.VAL_DIVERGENCE: self.model_step(batch, prompt),
            names.VAL_DIVERGENCE_NO_PROMPT: self.model_step(batch, None),
            names.VAL_DIVERGENCE_RANDOM_PROMPT: self.model_step(
                batch, random_like(prompt, seed=self.hparams.seed + 1)),
        }
        for key, value in results.items():
            self.log(key, value, prog_bar=key == names.VAL_DIVERGENCE, batch_size=bs, sync_dist=True)

    def configure_optimizers(self) -> dict:
        params = [p for n, p in self.named_parameters() if is_trainable(n)]
        opt = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        # linear warm-up over warmup_steps: factor (step + 1) / warmup_steps, then 1
        warmup = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warmup, total_iters=warmup - 1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:
            checkpoint["state_dict"] = {k: v for k, v in state.items() if is_trainable(k)}
        # The global RNG draws each epoch's shuffle: restoring it lets a resumed run see the
        # same batches as an uninterrupted one.
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("torch_rng_state")

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
        return Objective(str(hp.divergence), float(hp.temperature), int(hp.chunk_size or 0), int(hp.seed))

    def prompt_record(self) -> dict:
        """What ``soft_prompt.pt`` holds: the prompt and what is needed to reuse it.

        Only tensors, strings and numbers, so ``torch.load(..., weights_only=True)`` works.
        """
        hp = self.hparams
        return {
            "prompt": self.soft_prompt.weight.detach().float().cpu().clone(),
            "num_soft_prompt_tokens": int(hp.num_soft_prompt_tokens),
            "hidden_size": int(self.soft_prompt.weight.shape[1]),
            "init": str(hp.init),
            "divergence": str(hp.divergence),
            "temperature": float(hp.temperature),
            "pair": dict(hp.pair),
            names.GLOBAL_STEP: int(self.global_step),
        }
