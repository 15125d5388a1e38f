"""LoraFinetune: the LightningModule that trains an organism's LoRA adapter (response-only loss;
off-target rows distilled from the base, see :func:`finediff.sft.sft_loss`)."""

from __future__ import annotations

import lightning as L
import torch

from finediff.sft import sft_loss


class LoraFinetune(L.LightningModule):
    """Train the LoRA parameters of a PEFT model with the causal LM loss.

    Args:
        peft_model: a ``peft`` model whose only trainable parameters are the adapter's.
        learning_rate: AdamW learning rate.
        warmup_steps: linear warm-up steps, then linear decay to zero at ``total_steps``.
        total_steps: length of the schedule.
    """

    def __init__(self, peft_model, learning_rate: float = 2e-4, warmup_steps: int = 10, total_steps: int = 100):
        super().__init__()
        self.save_hyperparameters(ignore=["peft_model"])
        self.model = peft_model

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        distill = batch.get("distill")
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        base_logits = None
        if distill is not None and bool(distill.any()):
            # The base model is the PEFT model with its adapter switched off.
            with torch.no_grad(), self.model.disable_adapter():
                base_logits = self.model(**inputs).logits
        loss = sft_loss(self.model(**inputs).logits, batch["labels"], distill, base_logits)
        self.log("organism/train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> dict:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=0.0)
        warm, total = max(1, self.hparams.warmup_steps), max(2, self.hparams.total_steps)

        def schedule(step: int) -> float:
            return min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
