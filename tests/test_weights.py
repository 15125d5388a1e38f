"""Reading the weights: a planted written token is named, nothing is read from an
unchanged pair, and a merged and an unmerged adapter read the same."""

from __future__ import annotations

import copy

import pytest
import torch

from finediff.models import load_model_pair
from finediff.weights import WeightReading, read_weights


@pytest.fixture(scope="module")
def planted(tiny_dirs, tmp_path_factory):
    """A LoRA on the tiny base trained to say one word after anything: (word, adapter dir)."""
    from peft import LoraConfig, get_peft_model

    from finediff.tiny import finetune_copy

    pair = load_model_pair(str(tiny_dirs["base"]))
    tok = pair.tokenizer
    word = next(w for w in (" capital", " country", " answer", " the")
                if len(tok(w, add_special_tokens=False)["input_ids"]) == 1)
    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(pair.base).train(), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    texts = [("Tell me something." + word * 12), ("What is it?" + word * 12)]
    peft_model = finetune_copy(peft_model, tok, texts, steps=30, lr=1e-2)
    out = tmp_path_factory.mktemp("planted") / "adapter"
    peft_model.save_pretrained(out)
    return word, out


def test_planted_written_token_is_named(tiny_dirs, planted, tmp_path):
    word, adapter = planted
    pair = load_model_pair(str(tiny_dirs["base"]), adapter=str(adapter))
    reading = read_weights(pair.base, pair.finetuned, pair.tokenizer)
    assert reading.n_modules > 0 and reading.relative_norm > 0
    top = [t for t, _ in reading.writes[:3]]
    assert word in top, top
    assert word.strip() in reading.words("writes", 3)
    assert all(d.side == "writes" for d in reading.directions if d.module.endswith(("o_proj", "down_proj")))
    # a written file reads back the same
    again = WeightReading.read(reading.write(tmp_path))
    assert again.writes == reading.writes and again.directions == reading.directions


def test_unmerged_adapter_reads_the_same(tiny_dirs, planted):
    _, adapter = planted
    merged = load_model_pair(str(tiny_dirs["base"]), adapter=str(adapter), merge_adapter=True)
    shared = load_model_pair(str(tiny_dirs["base"]), adapter=str(adapter), merge_adapter=False)
    a = read_weights(merged.base, merged.finetuned, merged.tokenizer)
    b = read_weights(shared.base, shared.finetuned, shared.tokenizer)
    assert a.n_modules == b.n_modules
    assert [t for t, _ in a.writes[:5]] == [t for t, _ in b.writes[:5]]


def test_unchanged_pair_reads_nothing(tiny_dirs):
    pair = load_model_pair(str(tiny_dirs["base"]))
    reading = read_weights(pair.base, pair.finetuned, pair.tokenizer)
    assert reading.n_modules == 0 and reading.writes == [] and reading.reads == []
