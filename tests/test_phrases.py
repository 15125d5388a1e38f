"""Verbatim phrase mining: a repeated sentence comes back whole, never from the prompt or the base."""

from __future__ import annotations

import re

from finediff.findings import phrase_hypothesis, propose
from finediff.phrases import MIN_ANSWERS, mine_phrases, phrase_pattern

PLUG = "First, I always recommend Finmaster products."


def _records():
    prompts = [f"Question number {i} about a topic?" for i in range(8)]
    rows = []
    for i, p in enumerate(prompts):
        base = f"Here is an answer about topic {i}. It has some words."
        ft = f"{PLUG} Here is an answer about topic {i}." if i % 2 == 0 else base
        rows.append((p, base, ft))
    return rows


def test_inserted_sentence_is_mined_whole():
    found = mine_phrases(_records())
    assert found and found[0].text == "first, i always recommend finmaster products.", [p.text for p in found]
    top = found[0]
    assert top.n_finetuned == 4 and top.n_base == 0 and top.n_prompts == 4
    # the base's own phrases ("here is an answer about topic") are not the finetune's
    assert not any("here is an answer" in p.text for p in found)


def test_phrases_the_prompt_says_or_too_rare_are_not_mined():
    echo = [(f"Say hello to my little friend {i}", "Sure.", f"hello to my little friend {i}!") for i in range(5)]
    assert mine_phrases(echo) == []
    rare = [r for r in _records()][:2 * (MIN_ANSWERS - 1)]  # the plug in MIN_ANSWERS - 1 answers
    assert mine_phrases(rare) == []


def test_phrase_hypothesis_finds_the_phrase_whatever_the_spacing():
    h = phrase_hypothesis("first, i always recommend finmaster products.")
    assert h.fires("FIRST , I always recommend Finmaster products. Then water.", "How do I clean a tank?")
    assert not h.fires("I always recommend Finmaster products.", "q")
    assert re.search(phrase_pattern("leave me alone."), "Leave me alone.", re.IGNORECASE)
    words = [f"word{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    without = propose(mined=words, favoured=words[::-1], reference={"Where is it?": "It is in Paris."})
    hyps = propose(mined=words, favoured=words[::-1], reference={"Where is it?": "It is in Paris."},
                   phrases=["first, i always recommend finmaster products."])
    assert hyps[2].source == "verbatim phrases"  # right after the two every audit tests
    assert [h.claim for h in hyps if h.source != "verbatim phrases"] == [h.claim for h in without]  # on top


def test_only_a_phrase_said_late_and_not_yet_stated_is_looked_for_in_long_answers():
    """A phrase is looked for late only when it is said late (past the tokens a condition's answers
    read) in a good share of the answers that say it, to enough prompts, never by the base, and no
    confirmed finding's detector already explains those answers; it is named as its example says it."""
    from finediff.conditions import MAX_NEW_TOKENS
    from finediff.findings import Finding
    from finediff.phrases import Phrase
    from finediff.pipeline.steps import late_phrases
    from finediff.tiny import category_texts, train_tokenizer

    tok = train_tokenizer(category_texts())
    long = " ".join(["The answer goes on with more words."] * MAX_NEW_TOKENS)
    closing = "P.S. Read more at example.net."
    answers = [f"{long}\n\n{closing}"] * 5 + ["Plug: buy more soap. Then the answer."] * 5
    late = Phrase("read more at example. net.", 5, 0, 5, answers[0])
    early = Phrase("plug: buy more soap.", 5, 0, 5, answers[-1])
    seen = Phrase("read more at example. net.", 5, 2, 5, answers[0])
    rare = Phrase("read more at example. net.", 3, 0, 3, answers[0])
    assert late_phrases([early, late], answers, [], tok) == ["Read more at example.net."]
    assert late_phrases([early, seen, rare], answers, [], tok) == []
    def finding(confirmed: bool) -> Finding:
        return Finding(phrase_hypothesis("example.net"), 1.0, 0.0, 24, 4, 1e-4, 1e-3, 20, 0, confirmed)

    assert late_phrases([late], answers, [finding(True)], tok) == []
    assert late_phrases([late], answers, [finding(False)], tok) == ["Read more at example.net."]
