"""Time of one Lightning training step against a bare PyTorch loop doing the same work,
or (``--positions``) of the answer objective's step against the text objective's.

    python benchmarks/train_step.py [--steps 8] [--batch 4] [--length 64] [--adapter DIR]
    python benchmarks/train_step.py --positions [--steps 48] [--texts 104]

Both sides use the same real SmolLM2 pair (base vs base + the shipped sandbagging
adapter when present), the same batches of ``batch x length`` tokens, the same soft
prompt, objective and AdamW. A step is the time between the starts of two consecutive
iterations (forward through both models, backward to the prompt, optimizer step, and
for Lightning its logging, hooks and progress bar). Prints the median of each and their
ratio (Lightning / bare).

With ``--positions`` both sides are the Lightning module on a loader of the same
chat-formatted sandbagging texts (``--texts`` of them, batches of ``--batch``, at most
``length`` tokens, collated as a run's datamodule does): ``module.positions=text``
against ``response`` for each ``--answer-batch-size`` (0: a text's answer of
``--max-new-tokens`` regenerated once it is ``--refresh-every`` steps old, when its batch
comes; > 0: every text's answer at once every ``--refresh-every`` steps, that many per
generate call). Every step is timed from the first, so the answers made count in
proportion; the mean step of each and its ratio to the text step are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from finediff.answers import AnswerSettings
from finediff.data import REPO_ROOT, collate, format_parts, format_text, load_category
from finediff.divergence import pair_divergence
from finediff.models import load_model_pair
from lightning_modules import SoftPromptDivergence


class StepTimer(L.Callback):
    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.starts.append(time.perf_counter())


def batches(tokenizer, n: int, batch: int, length: int) -> list[dict]:
    texts = load_category("sandbagging", val_fraction=0.0).train
    out = []
    for i in range(n):
        chunk = texts[i * batch:(i + 1) * batch]
        ids = [(format_text(tokenizer, t) * 4)[:length] for t in chunk]  # exactly `length` tokens
        out.append(collate(ids, tokenizer.pad_token_id))
    return out


def chat_loader(tokenizer, n_texts: int, batch: int, length: int) -> torch.utils.data.DataLoader:
    texts = load_category("sandbagging", val_fraction=0.0).train[:n_texts]
    return torch.utils.data.DataLoader([format_parts(tokenizer, t) for t in texts], batch_size=batch, shuffle=False,
                                       collate_fn=partial(collate, pad_id=tokenizer.pad_token_id, max_length=length))


def lightning_steps(module, data, warmup: int, steps: Optional[int] = None) -> list[float]:
    """Seconds of each Lightning step after ``warmup`` steps (``steps`` in all, default:
    one pass over ``data``, a list of batches or a loader)."""
    timer = StepTimer()
    trainer = L.Trainer(max_steps=steps or len(data), accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0,
                        log_every_n_steps=1, callbacks=[timer, L.pytorch.callbacks.RichProgressBar()],
                        enable_model_summary=False)
    loader = data if isinstance(data, torch.utils.data.DataLoader) else torch.utils.data.DataLoader(data, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return [b - a for a, b in zip(timer.starts[warmup:], timer.starts[warmup + 1:])]


def compare_positions(pair, args) -> dict:
    loader = chat_loader(pair.tokenizer, args.texts, args.batch, args.length)
    result = {"texts": f"{len(loader.dataset)} texts, batches of {args.batch}, at most {args.length} tokens",
              "steps_timed": args.steps, "max_new_tokens": args.max_new_tokens, "refresh_every": args.refresh_every}
    module = SoftPromptDivergence(pair, learning_rate=1e-2, positions="text")
    result["text_step_s"] = round(statistics.mean(lightning_steps(module, loader, 0, args.steps)), 3)
    for size in args.answer_batch_size:
        answers = AnswerSettings(args.max_new_tokens, args.refresh_every, batch_size=size)
        module = SoftPromptDivergence(pair, learning_rate=1e-2, positions="response", answers=answers)
        step = statistics.mean(lightning_steps(module, loader, 0, args.steps))
        result[f"response_answer_batch_size_{size}"] = {
            "step_s": round(step, 3), "answers_generated": module.train_answers.generated,
            "ratio": round(step / result["text_step_s"], 3)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="steps timed (default 8; 48 with --positions)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--adapter", default=str(REPO_ROOT / "organisms" / "sandbagging"))
    ap.add_argument("--positions", action="store_true", help="time the answer objective against the text objective")
    ap.add_argument("--texts", type=int, default=104, help="--positions: texts in the loader (a run's training set)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--refresh-every", type=int, default=24)
    ap.add_argument("--answer-batch-size", type=int, nargs="+", default=[0, 32],
                    help="answers per generate call to time (0: answers made batch by batch; training uses 32)")
    args = ap.parse_args()
    args.steps = args.steps or (48 if args.positions else 8)
    torch.set_num_threads(torch.get_num_threads())
    adapter = args.adapter if Path(args.adapter, "adapter_config.json").exists() else None
    pair = load_model_pair(adapter=adapter)
    if args.positions:
        print(json.dumps(compare_positions(pair, args), indent=2))
        return
    n = args.steps + args.warmup
    data = batches(pair.tokenizer, n, args.batch, args.length)

    # Bare PyTorch: the same objective, prompt and optimizer.
    module = SoftPromptDivergence(pair, learning_rate=1e-2)
    opt = torch.optim.AdamW([module.soft_prompt.weight], lr=1e-2, weight_decay=0.0)
    starts = []
    for batch in data:
        starts.append(time.perf_counter())
        loss = -pair_divergence(pair, batch["input_ids"], batch["attention_mask"], module.soft_prompt())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([module.soft_prompt.weight], 1.0)
        opt.step()
    starts.append(time.perf_counter())
    bare = [b - a for a, b in zip(starts[args.warmup:], starts[args.warmup + 1:])]

    # Lightning: the project's module and a Trainer configured like configs/trainer/cpu.yaml.
    light = lightning_steps(SoftPromptDivergence(pair, learning_rate=1e-2, positions="text"), data,
                            args.warmup)

    result = {
        "pair": f"embedded:smollm2 vs {'+ ' + Path(adapter).name + ' adapter' if adapter else 'itself'}",
        "batch": f"{args.batch} x {args.length} tokens",
        "steps_timed": args.steps,
        "bare_step_s": round(statistics.median(bare), 3),
        "lightning_step_s": round(statistics.median(light), 3),
    }
    result["ratio"] = round(result["lightning_step_s"] / result["bare_step_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
