"""Model pair loading: sources, adapters, freezing, and one-line errors naming the input."""

from __future__ import annotations

import json

import pytest
import torch

from finediff.errors import FinediffError
from finediff.models import load_model_pair, resolve_source


def test_pair_is_frozen_and_in_eval(tiny_pair):
    assert all(not p.requires_grad for p in tiny_pair.parameters())
    assert not tiny_pair.base.training and not tiny_pair.finetuned.training
    assert tiny_pair.tokenizer.pad_token is not None


def test_adapter_is_applied_and_merged(tiny_dirs):
    plain = load_model_pair(str(tiny_dirs["base"]))
    with_adapter = load_model_pair(str(tiny_dirs["base"]), adapter=str(tiny_dirs["adapter"]))
    ids = torch.tensor([[5, 6, 7, 8]])
    same = plain.finetuned(ids).logits
    assert torch.allclose(plain.base(ids).logits, same)
    assert not torch.allclose(with_adapter.finetuned(ids).logits, same, atol=1e-4)
    torch.testing.assert_close(with_adapter.base(ids).logits, same)
    assert "lora" not in " ".join(n for n, _ in with_adapter.finetuned.named_parameters())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"base": "/nonexistent/model"}, "model path not found: /nonexistent/model"),
        ({"base": "embedded:nope"}, "unknown embedded model 'embedded:nope'"),
    ],
)
def test_bad_model_names(kwargs, message):
    with pytest.raises(FinediffError, match=message):
        load_model_pair(**kwargs)


def test_directory_without_config(tmp_path):
    with pytest.raises(FinediffError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_bad_adapters(tiny_dirs, tmp_path):
    with pytest.raises(FinediffError, match="adapter directory not found: /no/adapter"):
        load_model_pair(str(tiny_dirs["base"]), adapter="/no/adapter")
    with pytest.raises(FinediffError, match="no adapter_config.json"):
        load_model_pair(str(tiny_dirs["base"]), adapter=str(tmp_path))


def _variant(src, dst, **changes):
    """Copy a tiny model directory with config changes (weights re-initialised to fit)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_pretrained(src)
    for k, v in changes.items():
        setattr(cfg, k, v)
    LlamaForCausalLM(cfg).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return str(dst)


def test_hidden_size_mismatch(tiny_dirs, tmp_path):
    other = _variant(tiny_dirs["base"], tmp_path / "wide", hidden_size=96, intermediate_size=192)
    with pytest.raises(FinediffError, match="hidden size mismatch: base .* has 64, finetuned .* has 96"):
        load_model_pair(str(tiny_dirs["base"]), other)


def test_vocab_and_tokenizer_mismatch(tiny_dirs, tmp_path):
    from finediff.tiny import train_tokenizer

    other = _variant(tiny_dirs["base"], tmp_path / "vocab", vocab_size=300)
    with pytest.raises(FinediffError, match="vocabulary mismatch"):
        load_model_pair(str(tiny_dirs["base"]), other)
    tok = train_tokenizer(["completely different corpus " * 20, "another text entirely"], vocab_size=300)
    tok.save_pretrained(other)
    with pytest.raises(FinediffError, match="tokenizer mismatch"):
        load_model_pair(str(tiny_dirs["base"]), other)


def test_spec_recorded(tiny_dirs):
    pair = load_model_pair(str(tiny_dirs["base"]), adapter=str(tiny_dirs["adapter"]))
    spec = pair.spec.as_dict()
    assert spec["adapter"] == str(tiny_dirs["adapter"]) and json.dumps(spec)
