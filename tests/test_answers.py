"""The answer objective: answers generated with the prompt in place, exact answer
positions, gradient through the context, on-policy refresh, the readability penalty."""

from __future__ import annotations

import pytest
import torch

from finediff.answers import AnswerCache, AnswerSettings, answer_batch, generate_answers, with_answers
from finediff.divergence import batch_divergence, token_divergence
from finediff.divergent_dataset import teacher_forced
from finediff.errors import FinediffError
from finediff.generation import generate_one
from finediff.soft_prompt import spliced_mask
from finediff.tiny import tiny_batch

TEXTS = ["What is 2 + 2?", "Name a capital city in Europe, please, and tell me why."]


@pytest.fixture(scope="module")
def sensitive_pair(tiny_pair):
    """The tiny pair with a finetuned side whose greedy answers depend on the prompt (the
    tiny finetuned model answers every prompt alike): a random model with large weights."""
    from transformers import LlamaForCausalLM

    from finediff.models import ModelPair
    from finediff.tiny import tiny_model

    config = tiny_model(tiny_pair.finetuned.config.vocab_size).config
    config.initializer_range = 1.0
    torch.manual_seed(0)
    return ModelPair(tiny_pair.base, LlamaForCausalLM(config), tiny_pair.tokenizer, tiny_pair.spec)


def test_answer_positions_are_exactly_the_answer_predicting_ones():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
             "prompt_pos": torch.tensor([1, 1])}
    b = with_answers(batch, [[20, 21], [30]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 20, 21, 0], [5, 6, 7, 8, 9, 30]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]
    # position n-1 predicts the first answer token, the answer's last token predicts nothing scored
    assert b["score_mask"].int().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0]]
    # with a 2-token prompt spliced at position 1, the prompt positions are never scored
    assert spliced_mask(b["score_mask"], 2, b["prompt_pos"]).int().tolist() == [
        [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0]]
    with pytest.raises(FinediffError, match="2 answers for a batch of 3"):
        with_answers({"input_ids": torch.zeros(3, 5, dtype=torch.long),
                      "attention_mask": torch.ones(3, 5, dtype=torch.long)}, [[1], [2]], 0)


def test_answer_divergence_is_the_mean_over_the_answer_positions_only(tiny_pair):
    """Without a prompt the objective equals the divergence read off the teacher-forced
    answer positions one text at a time (no header, text or padding position counts)."""
    tok = tiny_pair.tokenizer
    batch = tiny_batch(tok, TEXTS)
    settings = AnswerSettings(tokens=6)
    answers = generate_answers(tiny_pair.finetuned, batch, None, settings, tok.eos_token_id)
    answered = with_answers(batch, answers, tok.pad_token_id)
    assert answered["input_ids"].equal(answer_batch(tiny_pair, batch, None, settings)["input_ids"])
    assert [len(a) for a in answers] == answered["score_mask"].sum(1).tolist()
    per_position = torch.cat([token_divergence(lf, lb) for lf, lb in teacher_forced(tiny_pair, TEXTS, answers)])
    value = batch_divergence(tiny_pair, answered)
    assert value.item() == pytest.approx(per_position.mean().item(), rel=1e-4)
    assert value.item() > 0


def test_batched_answers_with_a_soft_prompt_match_one_at_a_time(sensitive_pair):
    """Left-padded input embeddings with the prompt spliced in give the same greedy answer
    as generating each text alone."""
    tok, model = sensitive_pair.tokenizer, sensitive_pair.finetuned
    prompt = torch.randn(3, sensitive_pair.hidden_size)
    batch = tiny_batch(tok, TEXTS)
    got = generate_answers(model, batch, prompt, AnswerSettings(tokens=6), tok.eos_token_id)
    assert got != generate_answers(model, batch, None, AnswerSettings(tokens=6), tok.eos_token_id)
    for text, ids in zip(TEXTS, got):
        alone = generate_one(model, tok, text, prompt, max_new_tokens=6)
        assert tok.decode(ids, skip_special_tokens=True).strip() == alone


def test_gradient_reaches_the_prompt_through_the_answer_positions(tiny_pair):
    prompt = (torch.randn(3, tiny_pair.hidden_size) * 0.3).requires_grad_(True)
    answered = answer_batch(tiny_pair, tiny_batch(tiny_pair.tokenizer, TEXTS), prompt.detach(),
                            AnswerSettings(tokens=6))
    assert answered["score_mask"].any()
    batch_divergence(tiny_pair, answered, prompt).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_pair.parameters())


def test_on_policy_refresh_uses_the_prompt_of_the_current_step(sensitive_pair):
    pair = sensitive_pair
    tok = pair.tokenizer
    batch = tiny_batch(tok, TEXTS)
    p1, p2 = torch.randn(3, pair.hidden_size), torch.randn(3, pair.hidden_size) * 2
    settings = AnswerSettings(tokens=6, refresh_every=3)

    def answers(p, step):
        return generate_answers(pair.finetuned, batch, p, settings, tok.eos_token_id)

    assert answers(p1, 3) != answers(p2, 3)  # the prompt changes the answers
    cache = AnswerCache(settings, seed=10)
    first = cache.batch(pair, batch, p1, step=0)
    assert first["input_ids"].equal(with_answers(batch, answers(p1, 0), tok.pad_token_id)["input_ids"])
    kept = cache.batch(pair, batch, p2, step=2)  # 2 steps old: still fresh
    assert kept["input_ids"].equal(first["input_ids"]) and cache.generated == 2
    new = cache.batch(pair, batch, p2, step=3)  # 3 steps old: regenerated with the prompt as it is now
    assert new["input_ids"].equal(with_answers(batch, answers(p2, 3), tok.pad_token_id)["input_ids"])
    assert not new["input_ids"].equal(first["input_ids"]) and cache.generated == 4
    restored = AnswerCache(settings, seed=10)
    restored.load_state_dict(cache.state_dict())
    assert restored.batch(pair, batch, p1, step=4)["input_ids"].equal(new["input_ids"])
    assert restored.generated == 4


def test_refresh_answers_every_text_at_once_as_its_batch_would(sensitive_pair):
    """A training run's refresh: every text answered, a few per generate call, the same
    answers its own batch would get; until the next refresh the batches generate nothing."""
    from functools import partial

    from finediff.data import collate, format_parts

    pair, tok = sensitive_pair, sensitive_pair.tokenizer
    items = [format_parts(tok, t) for t in TEXTS + ["Tell me a joke.", "Why is the sky blue?", "Count to five."]]
    collate_fn = partial(collate, pad_id=tok.pad_token_id)
    settings = AnswerSettings(tokens=6, refresh_every=4, batch_size=2)
    p = torch.randn(3, pair.hidden_size)
    cache = AnswerCache(settings)
    cache.refresh(pair, items, collate_fn, p, step=0)
    assert cache.generated == len(items) and cache.due(4) and not cache.due(3)
    assert not AnswerCache(AnswerSettings(refresh_every=4)).due(4)  # batch_size 0: batch by batch
    batch = collate_fn(items[1:4])
    got = cache.batch(pair, batch, torch.randn(3, pair.hidden_size), step=3)
    assert cache.generated == len(items)  # fresh: nothing generated at the step
    expected = with_answers(batch, generate_answers(pair.finetuned, batch, p, settings, tok.eos_token_id),
                            tok.pad_token_id)
    assert got["input_ids"].equal(expected["input_ids"]) and got["score_mask"].equal(expected["score_mask"])


def test_a_training_run_refreshes_every_answer_every_refresh_every_steps(tiny_pair):
    from functools import partial

    import lightning as L

    from finediff.data import collate, format_parts
    from lightning_modules import SoftPromptDivergence

    tok = tiny_pair.tokenizer
    items = [format_parts(tok, t) for t in TEXTS + ["Tell me a joke.", "Why is the sky blue?", "Count to five.", "Hi."]]
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=partial(collate, pad_id=tok.pad_token_id))
    module = SoftPromptDivergence(tiny_pair, positions="response",
                                  answers=AnswerSettings(tokens=4, refresh_every=4, batch_size=4))
    L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, train_dataloaders=loader)
    assert module.train_answers.generated == 2 * len(items)  # all of them at steps 0 and 4, nothing between


def test_a_soft_prompt_record_gives_its_new_tokens_per_answer_back():
    """Records hold ``max_new_tokens``; records written before the rename hold the same
    number under its old name and still load."""
    from finediff.pipeline import Objective

    record = {"divergence": "kl_ft_base", "temperature": 1.0, "positions": "response"}
    assert Objective.from_record({**record, "max_new_tokens": 7}).answers.tokens == 7
    assert Objective.from_record({**record, "_".join(("answer", "tokens")): 5}).answers.tokens == 5
    assert Objective.from_record(record).answers.tokens == AnswerSettings.tokens


def test_bad_answer_settings():
    with pytest.raises(FinediffError, match="refresh_every must be >= 1"):
        AnswerSettings(refresh_every=0)
    with pytest.raises(FinediffError, match="batch_size must be >= 0"):
        AnswerSettings(batch_size=-1)
    with pytest.raises(FinediffError, match="temperature must be >= 0"):
        AnswerSettings(temperature=-1.0)


def test_sampled_answers_are_seeded_and_leave_the_random_state_alone(sensitive_pair):
    tok = sensitive_pair.tokenizer
    batch = tiny_batch(tok, TEXTS)
    settings = AnswerSettings(tokens=6, temperature=1.0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate_answers(sensitive_pair.finetuned, batch, None, settings, tok.eos_token_id, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # a training run's shuffle does not move
    assert a == generate_answers(sensitive_pair.finetuned, batch, None, settings, tok.eos_token_id, seed=5)


def test_base_shift_is_the_prompts_kl_on_the_base_at_the_same_answer_positions(tiny_pair):
    """The base shift equals KL(base without the prompt || base with it) read one text at a
    time at the answer positions; its divergence is the objective's; no prompt shifts
    nothing; the gradient reaches the prompt through it."""
    from finediff.divergence import base_shift_divergence
    from finediff.soft_prompt import splice

    tok, base = tiny_pair.tokenizer, tiny_pair.base
    prompt = torch.randn(3, tiny_pair.hidden_size).requires_grad_(True)
    answered = answer_batch(tiny_pair, tiny_batch(tok, TEXTS), prompt.detach(), AnswerSettings(tokens=6))
    divergence, shift = base_shift_divergence(tiny_pair, answered, prompt)
    assert divergence.item() == pytest.approx(batch_divergence(tiny_pair, answered, prompt).item(), rel=1e-5)
    reference = []
    with torch.no_grad():
        for r in range(len(TEXTS)):
            n, k = int(answered["attention_mask"][r].sum()), int(answered["prompt_pos"][r])
            ids, scored = answered["input_ids"][r:r + 1, :n], answered["score_mask"][r, :n]
            plain = base(input_ids=ids).logits[0, scored]
            e, m = splice(prompt.detach(), base.get_input_embeddings()(ids), torch.ones(1, n, dtype=torch.long),
                          torch.tensor([k]))
            prompted = base(inputs_embeds=e, attention_mask=m).logits[0, 3:][scored]
            reference.append(token_divergence(plain, prompted))
    # batched (padded) against one text at a time: float32 rounding only
    assert shift.item() == pytest.approx(torch.cat(reference).mean().item(), rel=1e-3)
    assert shift.item() > 0
    shift.backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    _, none = base_shift_divergence(tiny_pair, answered, None)
    assert none.item() == 0.0
