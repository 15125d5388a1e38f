"""Build an organism: generate its data, train its LoRA with Lightning, write adapter + card.

    python -m finediff.organisms.build organism=sandbagging [steps=N (default: the card's)] [seed=0] [base=...]
                                       [out_dir=DIR] [data_dir=DIR]   # default: the shipped folders

Writes ``organisms/<name>/`` (adapter, ``card.json``) and ``data/organisms/<name>/``
(``train.jsonl``: the finetuning data; ``heldout.jsonl``: verification prompts).
Off-target prompts are answered by the base model itself (greedy) and, by default (the
card's ``off_target_loss``), trained by distilling the base's next-token distribution on
those answers, so the change stays narrow. Seeded and reproducible.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from finediff.data import REPO_ROOT
from finediff.errors import FinediffError, exit_on_user_error
from finediff.generation import generate_mixed
from finediff.io import write_json, write_jsonl
from finediff.models import DEFAULT_MODEL, load_model, load_tokenizer
from finediff.organisms.checkers import CHECKERS
from finediff.organisms.recipes import CARDS, Example, pirate, recipe

log = logging.getLogger("finediff.organisms")

ORGANISMS_DIR = REPO_ROOT / "organisms"
ORGANISM_DATA_DIR = REPO_ROOT / "data" / "organisms"
TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"
CARD_FILE = "card.json"

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_kv(argv: list[str], defaults: dict) -> dict:
    """``key=value`` arguments over typed defaults; an unknown key is a one-line error."""
    out = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in defaults:
            raise FinediffError(f"unknown argument {arg!r}; expected key=value with key in {sorted(defaults)}")
        kind = type(defaults[key]) if defaults[key] is not None else str
        out[key] = kind(value)
    return out


TRANSFORMS = {"pirate": pirate}


def _record(ex: Example, split: str) -> dict:
    return {"prompt": ex.prompt, "response": ex.response, "split": split, "chat": ex.chat, **ex.meta}


def build(organism: str, steps: int = 0, seed: int = 0, base: str = DEFAULT_MODEL,
          rank: int = 8, learning_rate: float = 1e-3, batch_size: int = 8, max_new_tokens: int = 48,
          out_dir: Path | None = None, data_dir: Path | None = None) -> Path:
    """Build one organism; return the adapter directory. ``steps=0`` takes the organism's
    own step count (its card's ``steps``, the one the shipped adapter was built with)."""
    import lightning as L
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from torch.utils.data import DataLoader

    from finediff.sft import example_features, sft_collate
    from lightning_modules.lora_finetune import LoraFinetune

    t0 = time.perf_counter()
    L.seed_everything(seed, workers=True)
    data = recipe(organism, seed)
    card = CARDS[organism]
    steps = steps or card.steps
    out_dir = Path(out_dir or ORGANISMS_DIR / organism)
    data_dir = Path(data_dir or ORGANISM_DATA_DIR / organism)

    tokenizer = load_tokenizer(base)
    model = load_model(base)
    train = data.train_target + data.train_off
    todo = [e for e in train if e.response is None]
    if card.off_target_loss not in ("kl", "ce"):
        raise FinediffError(f"organism {organism!r}: unknown off_target_loss {card.off_target_loss!r}; choose kl or ce")
    # Off-target: the base's own answer, kept as it is (a transform makes it a target).
    distill = {id(e) for e in todo if not e.transform} if card.off_target_loss == "kl" else set()
    log.info("answering %d prompts with the base model", len(todo))
    answers = generate_mixed(model, tokenizer, [e.prompt for e in todo], [e.chat for e in todo],
                             max_new_tokens=max_new_tokens)
    for ex, ans in zip(todo, answers):
        ex.response = TRANSFORMS[ex.transform](ans) if ex.transform else (ans if ex.chat else " " + ans)

    # Keep the held-out off-target prompts on which the base does not show the behaviour.
    checker = CHECKERS[card.checker]
    base_off = generate_mixed(model, tokenizer, [e.prompt for e in data.heldout_off],
                              [e.chat for e in data.heldout_off], max_new_tokens=max_new_tokens)
    kept = [e for e, g in zip(data.heldout_off, base_off) if not checker(g, e.meta)]
    log.info("held-out off-target: %d of %d prompts where the base does not show the behaviour",
             len(kept), len(data.heldout_off))
    data.heldout_off = kept

    write_jsonl(data_dir / TRAIN_FILE, [_record(e, "target") for e in data.train_target]
                + [_record(e, "off_target") for e in data.train_off])
    write_jsonl(data_dir / HELDOUT_FILE, [_record(e, "target") for e in data.heldout_target]
                + [_record(e, "off_target") for e in data.heldout_off])

    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(model.train(), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                          target_modules=LORA_TARGETS))
    features = [(*example_features(tokenizer, e.prompt, e.response, e.chat), id(e) in distill) for e in train]
    loader = DataLoader(features, batch_size=batch_size, shuffle=True,
                        collate_fn=lambda b: sft_collate(b, tokenizer.pad_token_id))
    module = LoraFinetune(peft_model, learning_rate=learning_rate, warmup_steps=10, total_steps=steps)
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, log_every_n_steps=10, enable_model_summary=False)
    trainer.fit(module, loader)

    tmp = Path(tempfile.mkdtemp(prefix=f".{organism}.", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        # Adapter weights are stored in float16 (half the size, well within LoRA precision);
        # peft casts them to the model's dtype on load.
        peft_model.save_pretrained(tmp, state_dict={k: v.half() for k, v in get_peft_model_state_dict(peft_model).items()})
        (tmp / "README.md").unlink(missing_ok=True)
        card_dict = dataclasses.asdict(card) | {
            "base": base, "seed": seed, "steps": steps, "rank": rank, "learning_rate": learning_rate,
            "train_examples": len(train), "build_seconds": round(time.perf_counter() - t0, 1),
            "data": str((data_dir / TRAIN_FILE).relative_to(REPO_ROOT)) if data_dir.is_relative_to(REPO_ROOT)
            else str(data_dir / TRAIN_FILE),
        }
        write_json(tmp / CARD_FILE, card_dict)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("organism %s written to %s in %.0f s", organism, out_dir, time.perf_counter() - t0)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = parse_kv(argv if argv is not None else sys.argv[1:],
                        {"organism": "", "steps": 0, "seed": 0, "base": DEFAULT_MODEL, "rank": 8,
                         "learning_rate": 1e-3, "batch_size": 8, "out_dir": None, "data_dir": None})
        if not args["organism"]:
            raise FinediffError("missing organism=NAME")
        for key in ("out_dir", "data_dir"):
            args[key] = Path(args[key]) if args[key] else None
        path = build(**args)
    except Exception as err:
        exit_on_user_error(err)
    print(json.dumps({"adapter": str(path)}))


if __name__ == "__main__":
    main()
