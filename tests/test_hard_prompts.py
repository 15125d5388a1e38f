"""Hard-prompt search: the batched scorer matches the spliced objective, fluent candidates
are the base model's likely tokens, and GCG never ends below its start."""

from __future__ import annotations

import pytest
import torch

from finediff.divergence import pair_divergence
from finediff.hard_prompts import (BATCH_SIZE, EVAL_BATCHES, FLUENCY_WEIGHT, allowed_tokens, answered,
                                   batches_divergence, bridging_tokens, find_hard_prompts, fluent_tokens, gcg, GCGSettings,
                                   guided, HardPromptSettings, project, prompt_divergences, prompt_nll, prompt_objectives,
                                   token_nlls)
from finediff.hard_prompts import gcg_search
from finediff.hard_prompts import search as hp_search
from finediff.hard_prompts.scoring import _on_policy_objectives, _ranked
from finediff.tiny import tiny_batch

TEXTS = ["What is 2 + 2?", "A longer question about the capital of France, please?", "Name a colour."]


def _prompts(tok) -> list[torch.Tensor]:
    return [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in ("Answer now:", "Hi", "Tell me more")]


def test_prompt_divergences_match_the_spliced_objective(tiny_pair):
    """Many prompts scored at once from a cached header give each prompt's token-weighted
    divergence, the same as splicing it into every row."""
    tok = tiny_pair.tokenizer
    batches = [tiny_batch(tok, TEXTS[:2]), tiny_batch(tok, TEXTS[2:])]
    prompts = _prompts(tok)
    got = prompt_divergences(tiny_pair, prompts, batches)
    for p, value in zip(prompts, got):
        total = count = 0.0
        for b in batches:
            n = float(b["attention_mask"].sum() - b["prompt_pos"].sum())  # scored (body) positions
            total += n * pair_divergence(tiny_pair, b["input_ids"], b["attention_mask"], p,
                                         prompt_pos=b["prompt_pos"]).item()
            count += n
        assert value.item() == pytest.approx(total / count, rel=1e-3, abs=1e-6)
    assert (got >= 0).all()


def test_prompt_objectives_subtract_weighted_nll(tiny_pair):
    tok = tiny_pair.tokenizer
    batches = [tiny_batch(tok, TEXTS)]
    prompts = _prompts(tok)
    header = batches[0]["input_ids"][0, : int(batches[0]["prompt_pos"][0])].tolist()
    div = prompt_divergences(tiny_pair, prompts, batches)
    obj = prompt_objectives(tiny_pair, prompts, batches, fluency_weight=0.5)
    nll = torch.tensor([prompt_nll(tiny_pair.base, header, p).item() for p in prompts])
    assert torch.allclose(obj, div - 0.5 * nll, atol=1e-5)


def test_fluent_tokens_are_the_base_models_likeliest(tiny_pair):
    tok = tiny_pair.tokenizer
    batch = tiny_batch(tok, TEXTS[:1])
    header = batch["input_ids"][0, : int(batch["prompt_pos"][0])].tolist()
    ids = _prompts(tok)[0]
    allowed = allowed_tokens(tok, tiny_pair.base.get_input_embeddings().weight.shape[0])
    keep = fluent_tokens(tiny_pair.base, header, ids, allowed, 5)
    assert keep.sum(-1).tolist() == [5] * len(ids) and not (keep & ~allowed).any()
    with torch.no_grad():
        logits = tiny_pair.base(input_ids=torch.tensor([header + ids.tolist()])).logits[0]
    at = len(header) - 1  # predicts the prompt's first token
    top = logits[at].masked_fill(~allowed, -float("inf")).topk(5).indices
    assert set(top.tolist()) == set(keep[0].nonzero().flatten().tolist())
    assert fluent_tokens(tiny_pair.base, [], ids, allowed, 5)[0].equal(allowed)  # no context: any allowed token


def test_gcg_improves_on_a_start_that_is_not_optimal(tiny_pair):
    tok = tiny_pair.tokenizer
    batches = [tiny_batch(tok, TEXTS)]
    allowed = allowed_tokens(tok, tiny_pair.base.get_input_embeddings().weight.shape[0])
    start = _prompts(tok)[2]
    out = gcg(tiny_pair, start, batches, allowed, GCGSettings(steps=3, top_k=8, n_candidates=4, fluent_top=32),
              fluency_weight=0.02, progress=False)
    assert out.shape == start.shape and allowed[out].all()
    before, after = prompt_objectives(tiny_pair, [start, out], batches, fluency_weight=0.02)
    assert after > before and not out.equal(start)


def test_on_policy_gcg_improves_on_its_start_over_its_own_answers(tiny_pair):
    """On-policy GCG: the start and the result are each scored over the answers the
    finetuned model gives with them in place, and the result is above the start."""
    from finediff.answers import AnswerSettings, answer_batch
    from finediff.divergence import batch_divergence

    tok = tiny_pair.tokenizer
    batches = [tiny_batch(tok, TEXTS)]
    allowed = allowed_tokens(tok, tiny_pair.base.get_input_embeddings().weight.shape[0])
    start, answers = _prompts(tok)[2], AnswerSettings(tokens=4)
    out = gcg(tiny_pair, start, batches, allowed, GCGSettings(steps=2, top_k=8, n_candidates=4, fluent_top=32),
              fluency_weight=0.0, progress=False, answers=answers)
    got = _on_policy_objectives(tiny_pair, [start, out], batches, answers, "kl_ft_base", 1.0, 0.0, 256)
    assert got[1] > got[0]
    for p, value in zip((start, out), got):  # over the answers given with that prompt
        own = answer_batch(tiny_pair, batches[0], p, answers)
        assert value.item() == pytest.approx(batch_divergence(tiny_pair, own, p).item(), rel=1e-4)


def test_a_perplexity_budget_ranks_prompts_within_it_first():
    scores, nll = torch.tensor([0.9, 0.5, 0.1, 0.3]), torch.tensor([8.0, 6.0, 5.0, 7.5])
    assert _ranked(scores, nll, None).equal(scores)
    keys = _ranked(scores, nll, 6.5)  # within: the 2nd and 3rd; the better of them first
    assert keys.argsort(descending=True).tolist() == [1, 2, 3, 0]  # outside: the lower perplexity first
    current, cands = 9.0, torch.tensor([8.0, 10.0, 8.5])  # a walk (row 0 current): outside, lower than it
    walk = _ranked(torch.tensor([0.2, 0.1, 0.9, 0.5]), torch.cat([torch.tensor([current]), cands]), 6.5, walk=True)
    assert walk.argsort(descending=True).tolist() == [3, 1, 0, 2]  # the best of those that read better first
    assert _ranked(scores, nll, 6.5, walk=True).argsort(descending=True).tolist()[:2] == [1, 2]  # within: first


def test_gcg_under_a_perplexity_budget_returns_a_prompt_within_it_when_its_start_is(tiny_pair):
    tok = tiny_pair.tokenizer
    batches = [tiny_batch(tok, TEXTS)]
    allowed = allowed_tokens(tok, tiny_pair.base.get_input_embeddings().weight.shape[0])
    start = _prompts(tok)[2]
    header = batches[0]["input_ids"][0, : int(batches[0]["prompt_pos"][0])].tolist()
    limit = float(torch.exp(prompt_nll(tiny_pair.base, header, start))) * 1.5  # the start is within it
    how = GCGSettings(steps=3, top_k=8, n_candidates=4, fluent_top=0, max_perplexity=limit)
    out = gcg(tiny_pair, start, batches, allowed, how, fluency_weight=0.0, progress=False)
    assert float(torch.exp(prompt_nll(tiny_pair.base, header, out))) <= limit
    before, after = prompt_objectives(tiny_pair, [start, out], batches)
    assert after > before  # it searched within the budget, not stood still


def test_prompt_divergences_without_a_cache(tiny_dirs):
    """A model that returns no key/value cache (gradient checkpointing in train mode) gets
    the header in front of every row: the same scores."""
    from finediff.models import load_model_pair

    pair = load_model_pair(str(tiny_dirs["base"]), str(tiny_dirs["finetuned"]))
    batches = [tiny_batch(pair.tokenizer, TEXTS)]
    prompts = _prompts(pair.tokenizer)
    cached = prompt_divergences(pair, prompts, batches)
    for model in (pair.base, pair.finetuned):
        model.gradient_checkpointing_enable()
        model.train()
    assert torch.allclose(prompt_divergences(pair, prompts, batches), cached, atol=1e-5)


def test_dataset_prompts_use_distinct_hard_prompts_and_skip_their_own_text():
    from finediff.divergent_dataset import dataset_prompts

    ranked = ["Capital of Peru?", "Capital of Chile?", "Capital of Oman?"]
    hard = ["Capital of Peru?", " Capital of Peru? ", "zz qq"]  # the second is the first again
    got = dataset_prompts(hard, ranked, n_hard=2, per_hard=2, n_texts=1)
    assert got == ["Capital of Peru? Capital of Chile?", "Capital of Peru? Capital of Oman?",
                   "zz qq Capital of Peru?", "zz qq Capital of Chile?", "Capital of Peru?"]


def test_prompt_divergences_read_only_the_answer_positions_of_answer_batches(tiny_pair):
    """On the answer objective's batches the cached-header scorer gives each prompt the
    divergence over the answer positions, the same as splicing it into every row."""
    from finediff.answers import AnswerSettings, answer_batch
    from finediff.divergence import batch_divergence

    tok = tiny_pair.tokenizer
    batches = [answer_batch(tiny_pair, tiny_batch(tok, TEXTS[:2]), None, AnswerSettings(tokens=5)),
               answer_batch(tiny_pair, tiny_batch(tok, TEXTS[2:]), None, AnswerSettings(tokens=5))]
    prompts = _prompts(tok)
    got = prompt_divergences(tiny_pair, prompts, batches)
    for p, value in zip(prompts, got):
        n = [float(b["score_mask"].sum()) for b in batches]
        expected = sum(k * batch_divergence(tiny_pair, b, p).item() for k, b in zip(n, batches)) / sum(n)
        assert value.item() == pytest.approx(expected, rel=1e-3, abs=1e-6)
    text_only = prompt_divergences(tiny_pair, prompts, [tiny_batch(tok, TEXTS[:2]), tiny_batch(tok, TEXTS[2:])])
    assert not torch.allclose(got, text_only)


def test_guided_tokens_follow_the_displacement_among_fluent_candidates(tiny_pair):
    """Where a vector moved towards a token's (centred) embedding, guided decoding picks
    that token when the base model finds it likely there; every token it picks is among
    the base model's ``fluent_top`` likeliest; with ``start`` None it reads the vector."""

    tok, base = tiny_pair.tokenizer, tiny_pair.base
    batch = tiny_batch(tok, TEXTS[:1])
    header = batch["input_ids"][0, : int(batch["prompt_pos"][0])].tolist()
    weight = base.get_input_embeddings().weight.detach().float()
    allowed = allowed_tokens(tok, weight.shape[0])
    with torch.no_grad():
        logits = base(input_ids=torch.tensor([header])).logits[0, -1].masked_fill(~allowed, -float("inf"))
    target = int(logits.topk(3).indices[2])  # likely, but not the likeliest
    start = weight[torch.tensor([allowed.nonzero()[0, 0]] * 2)]
    prompt = start.clone()
    prompt[0] += 5 * (weight[target] - weight.mean(0))
    ids = guided(base, header, prompt, start, allowed, fluent_top=8)
    assert int(ids[0]) == target
    with torch.no_grad():
        nxt = base(input_ids=torch.tensor([header + [target]])).logits[0, -1].masked_fill(~allowed, -float("inf"))
    assert int(ids[1]) in nxt.topk(8).indices.tolist()
    assert guided(base, header, start + 5 * (weight[target] - weight.mean(0)), None, allowed, 8)[0] == target


@pytest.mark.parametrize("positions", [None, "response"])
def test_hard_prompts_of_a_text_trained_prompt_are_read_where_asked(tiny_pair, positions):
    """``evidence.hard_prompts.positions=response`` measures the hard prompts of a soft
    prompt trained at the text positions over the answers the finetuned model gives with
    each in place; unset, at the text positions it was trained on."""
    from finediff import pipeline

    tok = tiny_pair.tokenizer
    texts = pipeline.RunTexts(train=TEXTS * 2, val=TEXTS, max_length=32)
    objective = pipeline.Objective(positions="text", answers=pipeline.AnswerSettings(tokens=4))
    settings = pipeline.HardPromptSettings(methods=("projection",), positions=positions)
    prompt = torch.randn(3, tiny_pair.base.config.hidden_size) * 0.1
    (found,) = pipeline.hard_prompts(tiny_pair, prompt, texts, settings, objective, progress=False)
    val = texts.batches(tok, "val", EVAL_BATCHES, BATCH_SIZE)
    answers = objective.answers if positions == "response" else None
    ids = torch.tensor(found.token_ids)
    assert found.divergence == pytest.approx(batches_divergence(tiny_pair, ids, answered(tiny_pair, ids, val, answers)),
                                             rel=1e-4)
    assert found.divergence_no_prompt == pytest.approx(
        batches_divergence(tiny_pair, None, answered(tiny_pair, None, val, answers)), rel=1e-4)


def test_hard_prompt_positions_must_be_known():
    from finediff.errors import FinediffError
    from finediff.pipeline import HardPromptSettings

    with pytest.raises(FinediffError, match="evidence.hard_prompts.positions must be one of"):
        HardPromptSettings(positions="answers")


def test_allowed_tokens_leave_out_added_special_tokens(tiny_dirs):
    """An added token marked special (SmolLM2's ``<file_sep>``) is not among the tokenizer's
    named special ids, yet no prompt may use it."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["base"])
    tok.add_tokens([AddedToken("<file_sep>", special=True)])
    i = tok.convert_tokens_to_ids("<file_sep>")
    assert i not in tok.all_special_ids
    allowed = allowed_tokens(tok, len(tok))
    assert not allowed[i] and allowed.sum() > 0


def test_a_budget_walk_searches_freely_then_walks_the_result_into_the_budget(tiny_pair, monkeypatch):
    """``budget_steps``: GCG first searches without the perplexity budget (its own
    ``fluent_top``), then walks from that result under the budget with the walk's swaps
    (``WALK_FLUENT_TOP``, ``WALK_N_CANDIDATES``, ``WALK_BRIDGING``; set smaller here to keep
    the test short). The budget is set below the free search's result, so the walk starts
    outside it and must enter it."""

    calls = []
    real = hp_search.gcg

    def spy(pair, init_ids_P, batches, allowed_V, how, *args, **kwargs):
        out = real(pair, init_ids_P, batches, allowed_V, how, *args, **kwargs)
        calls.append((init_ids_P.tolist(), how.steps, how.n_candidates, how.fluent_top, how.max_perplexity, how.walk,
                      how.bridging, out.tolist()))
        return out

    monkeypatch.setattr(hp_search, "gcg", spy)  # where find_hard_prompts looks it up
    for name, value in (("FLUENCY_WEIGHT", 0.0), ("WALK_FLUENT_TOP", 16), ("WALK_N_CANDIDATES", 8),
                        ("WALK_BRIDGING", 2)):
        monkeypatch.setattr(hp_search, name, value)
    tok = tiny_pair.tokenizer
    batches = [tiny_batch(tok, TEXTS)]
    header = batches[0]["input_ids"][0, : int(batches[0]["prompt_pos"][0])].tolist()
    torch.manual_seed(0)
    prompt = torch.randn(3, tiny_pair.base.config.hidden_size)

    def perplexity(ids):
        return float(torch.exp(prompt_nll(tiny_pair.base, header, torch.tensor(ids))))

    def search(**budget):
        settings = HardPromptSettings(methods=["projection", "gcg"], gcg_steps=2, top_k=8, n_candidates=4,
                                      fluent_top=0, **budget)
        return {h.method: h for h in find_hard_prompts(tiny_pair, prompt, batches, batches, settings, progress=False)}

    free = search()["gcg"].token_ids
    limit = perplexity(free) / 2  # the free search's result is outside the budget
    calls.clear()
    found = search(max_perplexity=limit, budget_steps=6)
    (_, *searched, out1), (start2, *walk, out2) = calls
    assert searched == [2, 4, 0, None, False, 0] and walk == [6, 8, 16, limit, True, 2]
    assert start2 == out1 == free and found["gcg"].token_ids == out2
    assert perplexity(out1) > limit >= perplexity(out2)


def test_gcg_refines_a_derived_prompt_if_one_is_asked_for_else_the_best_start(tiny_pair, monkeypatch):
    """With a derived method among ``methods`` GCG starts from the best derived prompt, even
    where a text start scores higher; without one (the audit's ``[text, gcg]``) from the
    best of every start, the text start included."""
    starts = []
    monkeypatch.setattr(hp_search, "gcg", lambda pair, ids, *args, **kwargs: starts.append(ids.tolist()) or ids)
    tok = tiny_pair.tokenizer
    batches = [tiny_batch(tok, TEXTS)]
    weight = tiny_pair.base.get_input_embeddings().weight
    torch.manual_seed(0)
    prompt = torch.randn(3, weight.shape[1])
    projection = project(prompt, weight, allowed_tokens(tok, weight.shape[0])).tolist()
    for methods in (["projection", "text", "gcg"], ["text", "gcg"]):
        found = {h.method: h for h in find_hard_prompts(tiny_pair, prompt, batches, batches,
                                                        HardPromptSettings(methods=methods), init_texts=tuple(TEXTS),
                                                        progress=False)}
    text = found["text"].token_ids
    scores = prompt_objectives(tiny_pair, [torch.tensor(projection), torch.tensor(text)], batches,
                               fluency_weight=FLUENCY_WEIGHT)
    assert scores[1] > scores[0]  # the text start is the better one
    assert starts == [projection, text]


def test_bridging_tokens_are_the_exact_best_readers_at_a_position(tiny_pair):
    """Among the eligible tokens, the ones maximising ``log p(t | before) + log p(next |
    before, t)``, checked against a full forward of every eligible token in place."""

    tok = tiny_pair.tokenizer
    batch = tiny_batch(tok, TEXTS[:1])
    header = batch["input_ids"][0, : int(batch["prompt_pos"][0])].tolist()
    ids = _prompts(tok)[2]
    V = tiny_pair.base.get_input_embeddings().weight.shape[0]
    eligible = allowed_tokens(tok, V)
    pos = 0
    got = bridging_tokens(tiny_pair.base, header, ids, eligible, pos, 5, pool=V, chunk=37)
    assert len(got) == 5 and all(eligible[t] for t in got)
    scores = {}
    with torch.no_grad():
        for t in eligible.nonzero().flatten().tolist():
            x = torch.tensor([header + [t, int(ids[pos + 1])]])
            logp = tiny_pair.base(input_ids=x).logits[0].float().log_softmax(-1)
            scores[t] = float(logp[len(header) - 1, t] + logp[len(header), int(ids[pos + 1])])
    best = sorted(scores, key=scores.get, reverse=True)
    assert [scores[t] for t in got] == pytest.approx([scores[t] for t in best[:5]], abs=1e-3)
    last = bridging_tokens(tiny_pair.base, header, ids, eligible, len(ids) - 1, 3, pool=V)
    with torch.no_grad():  # the last position has no next token: the likeliest tokens there
        logits = tiny_pair.base(input_ids=torch.tensor([header + ids.tolist()])).logits[0, -2]
    assert last == logits.float().masked_fill(~eligible, -float("inf")).topk(3).indices.tolist()


def test_gcg_bridging_adds_the_bridging_swaps_at_the_least_likely_token(tiny_pair, monkeypatch):
    """``bridging``: each step scores, besides the gradient's draws, the bridging swaps at
    the token the base model finds least likely and at the one before it."""

    scored = []
    real = gcg_search.prompt_objectives

    def spy(pair, prompts, batches, *args):
        scored.append([p.tolist() for p in prompts])
        return real(pair, prompts, batches, *args)

    monkeypatch.setattr(gcg_search, "prompt_objectives", spy)  # where gcg looks it up
    tok = tiny_pair.tokenizer
    batches = [tiny_batch(tok, TEXTS)]
    header = batches[0]["input_ids"][0, : int(batches[0]["prompt_pos"][0])].tolist()
    allowed = allowed_tokens(tok, tiny_pair.base.get_input_embeddings().weight.shape[0])
    start = _prompts(tok)[2]
    gcg(tiny_pair, start, batches, allowed, GCGSettings(steps=1, top_k=8, n_candidates=3, fluent_top=0, bridging=4),
              fluency_weight=0.0, progress=False)
    current, *cands = scored[0]
    assert current == start.tolist() and len(cands) == 3 + 4
    worst = int(token_nlls(tiny_pair.base, header, start).argmax())
    places = [worst - 1, worst] if worst > 0 else [worst]
    want = []
    for pos in places:
        eligible = allowed.clone()
        eligible[start[pos]] = False
        for t in bridging_tokens(tiny_pair.base, header, start, eligible, pos, 4 // len(places)):
            c = start.clone()
            c[pos] = t
            want.append(c.tolist())
    assert cands[:4] == want
    assert len({tuple(c) for c in cands}) == len(cands)  # no swap scored twice
