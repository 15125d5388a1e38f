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
    with_adapter = load_model_pair(str(tiny_dirs["base"]), adapter=str(tiny_dirs["adapter"]), merge_adapter=True)
    ids = torch.tensor([[5, 6, 7, 8]])
    same = plain.finetuned(ids).logits
    assert torch.allclose(plain.base(ids).logits, same)
    assert not torch.allclose(with_adapter.finetuned(ids).logits, same, atol=1e-4)
    torch.testing.assert_close(with_adapter.base(ids).logits, same)
    assert "lora" not in " ".join(n for n, _ in with_adapter.finetuned.named_parameters())


def test_shared_weights_pair_matches_the_merged_pair(tiny_dirs, tmp_path):
    """merge_adapter=False: one copy of the weights (the finetuned side's modules read the
    base's tensors, plus the adapter's), the same logits on both sides, the same KL and
    norm-difference results."""
    base, adapter = str(tiny_dirs["base"]), str(tiny_dirs["adapter"])
    merged = load_model_pair(base, adapter=adapter, merge_adapter=True)
    shared = load_model_pair(base, adapter=adapter, merge_adapter=False)
    assert shared.shares_weights and not merged.shares_weights
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    for side in ("base", "finetuned"):
        diff = (getattr(merged, side)(ids).logits - getattr(shared, side)(ids).logits).abs().max().item()
        assert diff < 1e-5, (side, diff)
    assert not torch.allclose(shared.base(ids).logits, shared.finetuned(ids).logits, atol=1e-4)
    n_base = sum(p.numel() for p in shared.base.parameters())
    n_lora = sum(p.numel() for n, p in shared.finetuned.named_parameters() if "lora_" in n)
    assert n_lora > 0 and sum(p.numel() for p in shared.parameters()) == n_base + n_lora
    assert sum(p.numel() for p in merged.parameters()) == 2 * n_base
    assert all(not p.requires_grad for p in shared.parameters()) and not shared.finetuned.training
    # the other diffing methods over an activation cache of each pair
    from finediff.methods import preprocess, run_method

    texts = ["The cat sat on the mat.", "What is the capital of France?", "Two plus two is four."]
    summaries = []
    for name, pair in (("merged", merged), ("shared", shared)):
        cache = tmp_path / name / "cache"
        preprocess(pair, texts, cache, n_tokens=8, progress=False)
        summaries.append({m: run_method(m, pair, cache, tmp_path / name / m) for m in ("kl", "normdiff")})
    (a_num, a_text), (b_num, b_text) = (_split(_leaves(x)) for x in summaries)
    assert b_text == a_text and b_num == pytest.approx(a_num, rel=1e-3, abs=1e-6)


def _split(leaves: list) -> tuple[list, list]:
    numbers = [x for x in leaves if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return numbers, [x for x in leaves if x not in numbers or isinstance(x, bool)]


def _leaves(obj) -> list:
    """The numbers in a nested result, in order (strings must match exactly)."""
    if isinstance(obj, dict):
        return [x for k in obj for x in [k] + _leaves(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _leaves(v)]
    return [obj]


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


def test_every_output_is_the_same_with_shared_weights(tiny_dirs, tmp_path):
    """A whole run (soft prompt, hard prompts, divergent dataset, ADL, comparison) on the
    base + adapter pair, merged and shared: the same numbers and texts."""
    from finediff import names
    from finediff.records import LensSummary, read_dataset
    from tests.conftest import run_train

    runs = {}
    for merge in ("true", "false"):
        out = tmp_path / merge
        metrics = run_train(tiny_dirs, out, "model.finetuned=null", f"model.adapter={tiny_dirs['adapter']}",
                            f"model.merge_adapter={merge}")
        runs[merge] = (out, metrics)
    (a, ma), (b, mb) = runs["true"], runs["false"]
    assert {k: pytest.approx(v, rel=1e-3, abs=1e-6) for k, v in ma.items()} == mb
    torch.testing.assert_close(torch.load(b / names.SOFT_PROMPT_FILE)["prompt"],
                               torch.load(a / names.SOFT_PROMPT_FILE)["prompt"], rtol=1e-3, atol=1e-5)
    ha, hb = ([json.loads(x) for x in (d / names.HARD_PROMPTS_FILE).read_text().splitlines()] for d in (a, b))
    assert [h["text"] for h in ha] == [h["text"] for h in hb]
    assert [h["divergence"] for h in hb] == pytest.approx([h["divergence"] for h in ha], rel=1e-3, abs=1e-6)
    ra, rb = (read_dataset(d / names.DIVERGENT_DATASET_PT) for d in (a, b))
    assert [(r.prompt, r.generation_1, r.generation_2) for r in ra] == \
        [(r.prompt, r.generation_1, r.generation_2) for r in rb]
    for key in names.RECORD_METRICS:
        assert [r.metric(key) for r in rb] == pytest.approx([r.metric(key) for r in ra], rel=1e-3, abs=1e-6)
    la, lb = (LensSummary.read(d / names.LENS_DIR / names.LENS_SUMMARY) for d in (a, b))
    for layer in la.layers:
        for pa, pb in zip(la.layers[layer].positions, lb.layers[layer].positions):
            assert [t for t, _ in pa.patchscope["tokens"]] == [t for t, _ in pb.patchscope["tokens"]]
