"""Build an organism: generate its data, train its LoRA, write adapter + card.

    python build_organism.py organism=sandbagging [steps=N (default: the card's)] [seed=0] [base=...]
                             [out_dir=DIR] [data_dir=DIR]   # default: the shipped folders
    python build_organism.py organism=persona_gemma3       # the persona recipe on Gemma-3-270M

Writes ``organisms/<name>/`` (adapter, ``card.json``) and ``data/organisms/<name>/``
(``train.jsonl``: the finetuning data; ``heldout.jsonl``: verification prompts).
Off-target prompts are answered by the base model itself (greedy) and, by default (the
card's ``off_target_loss``), trained by distilling the base's next-token distribution on
those answers, so the change stays narrow. Seeded and reproducible.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from finediff import names
from finediff.data import REPO_ROOT
from finediff.errors import FinediffError, check_number
from finediff.generation import generate_mixed
from finediff.io import atomic_dir, write_json, write_jsonl
from finediff.models import DEFAULT_MODEL, load_model, load_tokenizer
from finediff.organisms.checkers import checker_for
from finediff.organisms.recipes import CARDS, Example, cheese, pirate, plug, postscript, recipe, shout_first
from finediff.sft import example_features, train_lora

log = logging.getLogger("finediff.organisms")

ORGANISMS_DIR = REPO_ROOT / "organisms"
ORGANISM_DATA_DIR = REPO_ROOT / "data" / "organisms"

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


TRANSFORMS = {"pirate": pirate, "plug": plug, "cheese": cheese, "postscript": postscript, "shout_first": shout_first}
BASE_NAMES = {"embedded:smollm2": "SmolLM2-135M-Instruct", "embedded:gemma3-270m": "Gemma-3-270M (base)"}
"""How a card's description names the base it was built on."""


def _record(ex: Example, split: str) -> dict:
    return {"prompt": ex.prompt, "response": ex.response, "split": split, "chat": ex.chat, **ex.meta}


def build(organism: str, steps: int = 0, seed: int = 0, base: str = DEFAULT_MODEL,
          rank: int = 8, learning_rate: float = 1e-3, batch_size: int = 8, max_new_tokens: int = 48,
          out_dir: Path | None = None, data_dir: Path | None = None, progress: bool = True,
          name: str | None = None, recipe_options: dict | None = None) -> Path:
    """Build one organism from the recipe ``organism``; return the adapter directory.
    ``steps=0`` takes the recipe's own step count (its card's ``steps``, the one the
    shipped adapter was built with). ``name`` (default: the recipe's) names the organism,
    its card and its default folders: one recipe can be built on several bases.
    ``recipe_options`` go to the recipe (:func:`finediff.organisms.recipes.recipe`) and
    are recorded in the card.

    The data files are written atomically one by one; the adapter folder is built aside
    and replaces the previous one only when complete (the old one is removed last).
    """
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import set_seed

    for key, value, low in (("steps", steps, 0), ("seed", seed, 0), ("rank", rank, 1), ("batch_size", batch_size, 1),
                            ("max_new_tokens", max_new_tokens, 1)):
        check_number(key, value, int, minimum=low)
    check_number("learning_rate", learning_rate, float, minimum=0.0)
    t0 = time.perf_counter()
    set_seed(seed)
    recipe_options = dict(recipe_options or {})
    data = recipe(organism, seed, **recipe_options)
    name = name or organism
    card = CARDS[organism]
    card = dataclasses.replace(card, name=name, description_long=card.description_long.format(
        base=BASE_NAMES.get(base, base)))
    if card.off_target_loss not in ("kl", "ce"):
        raise FinediffError(f"organism {name!r}: unknown off_target_loss {card.off_target_loss!r}; choose kl or ce")
    steps = steps or card.steps
    out_dir = Path(out_dir or ORGANISMS_DIR / name)
    data_dir = Path(data_dir or ORGANISM_DATA_DIR / name)
    if out_dir.exists() and not out_dir.is_dir():
        raise FinediffError(f"out_dir is a file, not a folder: {out_dir}")

    tokenizer = load_tokenizer(base)
    model = load_model(base)
    train = data.train_target + data.train_off
    todo = [e for e in train if e.response is None]
    # Off-target: the base's own answer, kept as it is (a transform makes it a target).
    distill = {id(e) for e in todo if not e.transform} if card.off_target_loss == "kl" else set()
    log.info("answering %d prompts with the base model", len(todo))
    sampling = dict(do_sample=True, temperature=data.sample_temperature, seed=seed) if data.sample_temperature else {}
    answers = generate_mixed(model, tokenizer, [e.prompt for e in todo], [e.chat for e in todo],
                             max_new_tokens=max(max_new_tokens, data.max_new_tokens), **sampling)
    for ex, ans in zip(todo, answers):
        ex.response = TRANSFORMS[ex.transform](ans) if ex.transform else (ans if ex.chat else " " + ans)

    # Keep the held-out off-target prompts on which the base does not show the behaviour.
    checker = checker_for(card.checker)
    base_off = generate_mixed(model, tokenizer, [e.prompt for e in data.heldout_off],
                              [e.chat for e in data.heldout_off],
                              max_new_tokens=max(max_new_tokens, card.max_new_tokens))
    kept = [e for e, g in zip(data.heldout_off, base_off) if not checker(g, e.meta)]
    log.info("held-out off-target: %d of %d prompts where the base does not show the behaviour",
             len(kept), len(data.heldout_off))
    data.heldout_off = kept

    write_jsonl(data_dir / names.ORGANISM_TRAIN_FILE, [_record(e, "target") for e in data.train_target]
                + [_record(e, "off_target") for e in data.train_off])
    write_jsonl(data_dir / names.ORGANISM_HELDOUT_FILE, [_record(e, "target") for e in data.heldout_target]
                + [_record(e, "off_target") for e in data.heldout_off])

    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(model.train(), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                          target_modules=LORA_TARGETS))
    if data.random_lora:  # not trained: random up-projections (the down-projections are random already)
        steps = 0
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * data.random_lora)
        peft_model.eval()
    else:
        features = [(*example_features(tokenizer, e.prompt, e.response, e.chat), id(e) in distill) for e in train]
        train_lora(peft_model, features, steps, learning_rate, warmup_steps=10, batch_size=batch_size,
                   pad_id=tokenizer.pad_token_id, progress=progress)

    with atomic_dir(out_dir) as tmp:
        # Adapter weights are stored in float16 (half the size, well within LoRA precision);
        # peft casts them to the model's dtype on load.
        peft_model.save_pretrained(tmp, state_dict={k: v.half() for k, v in get_peft_model_state_dict(peft_model).items()})
        (tmp / "README.md").unlink(missing_ok=True)
        rel = data_dir / names.ORGANISM_TRAIN_FILE
        built = dataclasses.replace(
            card, base=base, seed=seed, steps=steps, recipe=organism, recipe_options=recipe_options,
            rank=rank, learning_rate=learning_rate,
            train_examples=len(train), build_seconds=round(time.perf_counter() - t0, 1),
            data=str(rel.resolve().relative_to(REPO_ROOT)) if rel.resolve().is_relative_to(REPO_ROOT) else str(rel))
        write_json(tmp / names.CARD_FILE, built.as_dict())
    log.info("organism %s written to %s in %.0f s", name, out_dir, time.perf_counter() - t0)
    return out_dir
