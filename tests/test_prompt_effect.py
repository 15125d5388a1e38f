"""The soft prompt's effect in words: both models with and without it, a broken model named
as such, and a confirmed behaviour it brings out."""

from __future__ import annotations

import torch

from finediff.findings import word_hypothesis
from finediff.prompt_effect import VERDICTS, PromptEffect, broken, prompt_effect, read_effect, write_effect


def test_broken_answers(tiny_pair):
    tok = tiny_pair.tokenizer
    assert broken("", tok, 0.3)
    assert broken("the the the the the the the the the the the the", tok, 0.3)
    assert not broken("What is the capital of France? It is a city.", tok, 0.3)


def test_effect_on_the_tiny_pair(tiny_pair, tmp_path, monkeypatch):
    texts = ["What is the capital of France?", "Tell me about rivers.", "How do I bake bread?"]
    torch.manual_seed(0)
    prompt = torch.randn(4, tiny_pair.hidden_size) * 0.05
    monkeypatch.setattr("finediff.prompt_effect.MAX_NEW_TOKENS", 6)
    monkeypatch.setattr("finediff.prompt_effect.N_TEXTS", 2)
    effect = prompt_effect(tiny_pair, prompt, texts)
    assert effect.verdict in VERDICTS and len(effect.rows) == 2 and effect.nearest_tokens
    assert set(effect.rows[0]) == {"text", "base", "base_with", "finetuned", "finetuned_with"}
    assert read_effect(write_effect(effect, tmp_path)) == effect
    # a detector that fires on whatever the finetuned model says with the prompt, and on nothing else
    said = effect.rows[0]["finetuned_with"].split()
    if said and said[0].isalpha() and len(said[0]) >= 3 and said[0] not in effect.rows[0]["finetuned"]:
        hyp = word_hypothesis(said[0].lower(), "more", "test")
        shown = prompt_effect(tiny_pair, prompt, texts, [("says it", hyp)])
        assert shown.verdict in (VERDICTS[0], VERDICTS[1])


def test_sentences():
    base = dict(nearest_tokens="a b", readable=None, rows=[])
    assert "breaks the finetuned model" in PromptEffect(VERDICTS[0], broken={"finetuned/with": 1.0}, **base).sentence()
    assert "(it says rome)" in PromptEffect(VERDICTS[1], shown="says rome", **base).sentence()
    assert "not into any behaviour" in PromptEffect(VERDICTS[2], **base).sentence()


def test_noise_is_seen_by_the_base_reading_without_the_prompt(tiny_pair, monkeypatch):
    """Answers that are neither empty nor repeated but that their own model, reading them without
    the prompt, finds far less likely than its answers without it are noise, and the sentence says so."""
    from finediff.prompt_effect import answer_nll

    base = dict(nearest_tokens="a b", readable=None, rows=[])
    noisy = PromptEffect(VERDICTS[0], nll={"base/without": 1.1, "base/with": 6.3, "finetuned/without": 1.2,
                                           "finetuned/with": 1.4}, **base)
    assert noisy.noise("base") and not noisy.noise("finetuned")
    assert "breaks the base model" in noisy.sentence() and "6.3 nats per token" in noisy.sentence()
    # measured: a random word salad is far less likely under the tiny base than its own greedy answer
    from finediff.generation import generate_one

    text = "What is the capital of France?"
    own = generate_one(tiny_pair.base, tiny_pair.tokenizer, text, None, 8)
    salad = "zebra quantum marmalade seventeen velvet"
    rows = [{"text": text, "base": own, "base_with": salad, "finetuned": own, "finetuned_with": own}]
    nll = answer_nll(tiny_pair, rows)
    assert nll["base/with"] > nll["base/without"] and nll["finetuned/with"] == nll["finetuned/without"]
