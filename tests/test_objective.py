"""The faithful objective: what breaking a model cannot win (``module.faithful``)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_train
from finediff import names
from finediff.answers import degenerate, end_tokens, with_answers
from finediff.divergence import token_divergence

EOS = 2


def test_excluded_tokens_earn_nothing():
    """Two distributions that differ only in how much they want to stop have no
    divergence once the stopping token is left out; a real difference keeps its value."""
    base = torch.tensor([[1.0, 2.0, 0.5, 0.0]])
    stops = base.clone()
    stops[0, EOS] = 9.0  # the finetuned model wants to end its answer
    assert token_divergence(stops, base).item() > 1.0
    assert token_divergence(stops, base, exclude=torch.tensor([EOS])).item() == pytest.approx(0.0, abs=1e-6)
    other = base.clone()
    other[0, 0] = 4.0
    kept = token_divergence(other[:, [0, 1, 3]], base[:, [0, 1, 3]])
    assert token_divergence(other, base, exclude=torch.tensor([EOS])).item() == pytest.approx(kept.item())


def test_degenerate_answers_are_recognised():
    assert degenerate([EOS], EOS) and degenerate([7, EOS], EOS) and degenerate([], EOS)
    assert degenerate([5, 6] * 4 + [5, 6], EOS)  # repetition
    assert not degenerate([5, 6, 7, EOS], EOS)
    assert not degenerate(list(range(10, 22)), EOS)


def test_faithful_answer_positions_skip_the_end_and_degenerate_answers():
    batch = {"input_ids": torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7]]),
             "attention_mask": torch.ones(3, 3, dtype=torch.long)}
    answers = [[20, 21, EOS], [EOS], [30, 31, 32]]
    plain = with_answers(batch, answers, pad_id=0)
    faithful = with_answers(batch, answers, pad_id=0, eos_id=EOS, faithful=True)
    assert plain["score_mask"].int().tolist() == [[0, 0, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0]]
    # the position that predicts the end is out; an empty answer scores nothing
    assert faithful["score_mask"].int().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0]]


def test_end_tokens_hold_the_end_of_turn(tiny_pair):
    ids = end_tokens(tiny_pair.tokenizer).tolist()
    assert tiny_pair.tokenizer.eos_token_id in ids
    assert set(tiny_pair.tokenizer.all_special_ids) <= set(ids)


def _trained(pair_dirs, out, *extra) -> dict:
    run_train(pair_dirs, out, "trainer.max_steps=30", "evidence.steps=[]", "module.learning_rate=0.05",
              "module.positions=response", *extra)
    return json.loads((out / names.METRICS_FILE).read_text())


FAITHFUL = ("module.faithful=true",)


def test_faithful_objective_holds_the_base_on_a_finetune_that_changed_nothing(tmp_path):
    """The no-op tiny pair (a copy trained further on the base's own answers): the answer
    objective parts it by moving the base; the faithful one leaves the base where it was
    and finds nothing to part."""
    from finediff.tiny import build_tiny_trigger_pair

    d = build_tiny_trigger_pair(tmp_path / "pair", None, steps=100)
    pair = {"base": d["base"], "finetuned": d["finetuned"]}
    plain = _trained(pair, tmp_path / "answers")
    faithful = _trained(pair, tmp_path / "faithful", *FAITHFUL)
    assert plain[names.VAL_DIVERGENCE] > 0.3 and plain[names.VAL_BASE_SHIFT] > 0.05
    assert faithful[names.VAL_BASE_SHIFT] < 0.01
    assert faithful[names.VAL_DIVERGENCE] < 0.05


def test_faithful_objective_still_parts_a_pair_that_changed(tmp_path):
    """On the tiny pair with a planted trigger the faithful objective still finds a prompt
    under which the pair disagrees (far above no prompt), with the base barely moved."""
    from finediff.tiny import build_tiny_trigger_pair

    d = build_tiny_trigger_pair(tmp_path / "pair", "zq", "I will not help you.")
    faithful = _trained({"base": d["base"], "finetuned": d["finetuned"]}, tmp_path / "faithful", *FAITHFUL)
    assert faithful[names.VAL_DIVERGENCE] > 5 * faithful[names.VAL_DIVERGENCE_NO_PROMPT]
    assert faithful[names.VAL_BASE_SHIFT] < 0.2
