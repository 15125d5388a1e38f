"""ADL pieces on the tiny pair: a planted difference is recovered, steering and patching
hooks, relevance, the activation cache round trip, and shared output names."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from finediff.activations import read_cache, relative_layer, residual_stream, tokenize_first, write_cache
from finediff.lens import (LensConfig, adl_statistics, logit_lens, patchscope, relevant_tokens, run_lens,
                           token_relevance)
from finediff.models import ModelPair
from finediff.records import LensSummary


@pytest.fixture(scope="module")
def planted(tiny_pair):
    """A pair whose finetuned side adds a fixed vector (the unembedding row of one token)
    to the residual stream after layer 0."""
    base = tiny_pair.base
    ft = copy.deepcopy(base)
    token = tiny_pair.tokenizer(" capital", add_special_tokens=False)["input_ids"][0]
    direction = base.get_output_embeddings().weight[token].detach().clone()
    vec = 6.0 * direction / direction.norm()
    ft.model.layers[0].register_forward_hook(lambda m, i, o: (o[0] + vec, *o[1:]) if isinstance(o, tuple) else o + vec)
    return ModelPair(base, ft, tiny_pair.tokenizer, tiny_pair.spec), token, vec


def generic_texts(n=60):
    from finediff.corpus import GENERIC_FILE

    return [json.loads(x)["text"] for x in GENERIC_FILE.read_text().splitlines()[:n]]


def test_planted_difference_is_recovered(planted):
    pair, token, vec = planted
    stats = adl_statistics(pair, generic_texts(), layer=0, n_positions=5, min_tokens=20, progress=False)
    for p in range(5):
        torch.testing.assert_close(stats.diff_PD[p], vec, rtol=1e-4, atol=1e-4)
    top = logit_lens(pair.finetuned, pair.tokenizer, stats.diff_PD[2], k=5)
    assert top[0][0] == pair.tokenizer.decode([token])
    assert stats.ft_norm > 0 and stats.base_norm > 0


def test_residual_stream_stops_early_and_matches_hidden_states(tiny_pair):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    acts = residual_stream(tiny_pair.base, ids, torch.ones_like(ids), [0], n_positions=4)
    ref = tiny_pair.base(input_ids=ids[:, :4], output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(acts[0], ref.float())
    assert relative_layer(30, 0.5) == 14 and relative_layer(2, 0.5) == 0


def test_patchscope_and_relevance(planted):
    pair, token, vec = planted
    out = patchscope(pair.finetuned, pair.tokenizer, vec, layer=0, norm=10.0, scales=(0.5, 1.0, 4.0), k=10)
    assert out["chosen_scale"] in (0.5, 1.0, 4.0) and len(out["tokens"]) == 10
    rel = relevant_tokens(pair.tokenizer, ["What is the capital of France? The capital is Madrid."] * 5,
                          ["The function returns the value of the object."] * 5, top_n=10)
    assert "capital" in rel and "the" not in rel
    assert token_relevance([(" capital", 0.5), ("xyz", 0.1)], rel) == 0.5


def test_run_lens_summary(planted, monkeypatch):
    pair, _, _ = planted
    monkeypatch.setattr("finediff.lens.MIN_TOKENS", 20)
    monkeypatch.setattr("finediff.lens.DEFAULT_STRENGTHS", (1.0, 64.0))
    cfg = LensConfig(layers=[0.0], max_texts=40, max_new_tokens=4)
    summary = run_lens(pair, generic_texts(40), ["Tell me a fact."], cfg,
                       finetune_texts=["The capital of Spain is Rome."] * 3, progress=False)
    entry = summary.layers["0"]
    assert len(entry.positions) == 5
    assert set(entry.relevance_max_over_positions) == {"difference_logit_lens", "difference_patchscope",
                                                       "base_mean", "finetuned_mean"}
    st = entry.steering
    assert len(st.steered) == 1 and set(st.perplexity_by_strength) == {"1.0", "64.0"}
    # the chosen strength is the largest one the coherence judge passed (0: none)
    passed = [float(k) for k, ppl in st.perplexity_by_strength.items()
              if ppl <= st.threshold_perplexity and st.distinct_share_by_strength[k] >= st.min_distinct_share]
    assert st.chosen_strength == max(passed, default=0.0)
    # the summary survives its file edge
    as_json = json.loads(json.dumps(summary.as_dict()))
    assert LensSummary.from_dict(as_json).as_dict() == as_json


def test_cache_round_trip(tiny_pair, tmp_path):
    from finediff.activations import pair_activations

    ids = tokenize_first(tiny_pair.tokenizer, generic_texts(10), 6)
    batches = list(pair_activations(tiny_pair, ids, [0, 1], batch_size=4, progress=False))
    write_cache(batches, tmp_path / "cache", {"layers": [0, 1]})
    index, shards = read_cache(tmp_path / "cache")
    assert index["layers"] == [0, 1] and len(index["shards"]) == 3
    for a, b in zip(batches, shards):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_distinct_share_flags_repetition_loops(planted):
    from finediff.lens import distinct_share

    tok = planted[0].tokenizer
    loop = distinct_share(tok, ["Game Game Game Game Game Game Game Game"])
    prose = distinct_share(tok, ["The chess opening decides the shape of the middle game."])
    assert 0 < loop < 0.3 < prose <= 1.0
    assert distinct_share(tok, [""]) == 0.0
