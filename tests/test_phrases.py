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
