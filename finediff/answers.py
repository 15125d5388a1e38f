"""The answer objective: the pair's divergence over what the finetuned model *answers*.

A narrow finetune changes what the model says, not how it reads the question, so the
soft prompt is trained (``module.positions=response``) to make the two models disagree
over the finetuned model's answer to each text, with the prompt in place:

1. the finetuned model answers each text with the current prompt spliced in
   (:func:`generate_answers`: batched, left-padded input embeddings, KV cache);
2. the answer is appended to the text (:func:`with_answers`), and both models are
   teacher-forced on ``header + prompt + text + answer``;
3. the divergence is averaged over the positions that predict the answer's tokens only
   (``score_mask``): the header, the prompt, the text and the padding never count. The
   gradient reaches the prompt through the context, since every answer position attends
   to it.

Answers are regenerated with the current prompt (on-policy) once they are
``refresh_every`` steps old (:class:`AnswerCache`): by default when the text's batch
comes; with ``batch_size`` > 0 a training run instead refreshes every training text's
answer at once every ``refresh_every`` steps, ``batch_size`` texts per ``generate`` call
(:meth:`AnswerCache.refresh`), which costs far less per answer than generating a few
texts at most steps. ``refresh_every = 1`` regenerates every step.

A batch is the usual dict (``input_ids``, ``attention_mask``, ``prompt_pos``, right
padded) plus ``score_mask`` ``[B, T]``; :func:`finediff.divergence.pair_divergence` and
the hard-prompt search score exactly the ``score_mask`` positions when it is present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from finediff.errors import FinediffError
from finediff.generation import sampling
from finediff.soft_prompt import splice

POSITIONS = ("response", "text")
"""Where the soft prompt's objective reads the divergence: the finetuned model's answer,
or the text itself."""


@dataclass
class AnswerSettings:
    """How the answers the objective scores are produced."""

    tokens: int = 16
    """New tokens per answer."""
    refresh_every: int = 24
    """Regenerate a text's answer once it is this many training steps old (1: every step)."""
    temperature: float = 0.0
    """0: greedy answers; > 0: sampled at this temperature."""
    top_p: float = 1.0
    batch_size: int = 0
    """0: answers are made batch by batch as the texts come; > 0: a training run refreshes
    every text's answer at once every ``refresh_every`` steps, this many per ``generate``
    call."""
    faithful: bool = False
    """The objective that breaking a model cannot win: both models answer with the prompt
    and the divergence reads both answers; the special tokens (the end of a turn among
    them) are left out of both distributions, the position that predicts an answer's end
    is not scored, and an empty or repetitive answer (:func:`degenerate`) scores nothing."""

    def __post_init__(self):
        if self.tokens < 1 or self.refresh_every < 1:
            raise FinediffError(f"answers: tokens and refresh_every must be >= 1, "
                                f"got {self.tokens} and {self.refresh_every}")
        if self.batch_size < 0:
            raise FinediffError(f"answers: batch_size must be >= 0, got {self.batch_size}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise FinediffError(f"answers: temperature must be >= 0 and top_p in (0, 1], "
                                f"got {self.temperature} and {self.top_p}")


def check_positions(positions: str, where: str = "module.positions") -> str:
    if positions not in POSITIONS:
        raise FinediffError(f"{where} must be one of {', '.join(POSITIONS)}; got {positions!r}")
    return positions


def _rows(batch: dict) -> list[tuple[int, int]]:
    """``(real length, prompt position)`` of each row of a right-padded batch."""
    n = batch["attention_mask"].sum(dim=1).tolist()
    pos = batch.get("prompt_pos")
    k = pos.tolist() if pos is not None else [0] * len(n)
    return list(zip((int(x) for x in n), (int(x) for x in k)))


@torch.no_grad()
def generate_answers(model, batch: dict, prompt: Optional[torch.Tensor] = None, settings: AnswerSettings = AnswerSettings(),
                     eos_id: Optional[int] = None, seed: Optional[int] = None) -> list[list[int]]:
    """The model's answer to each row of ``batch`` (chat-formatted user turns that end with
    the generation prompt), with ``prompt`` (a ``[P, D]`` soft prompt or ``[P]`` token ids)
    spliced at each row's ``prompt_pos``. Rows are left-padded as input embeddings and
    generated in one ``generate`` call with the KV cache. Each answer ends with the
    end-of-sequence token when the model stopped (it is part of what the model said)."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    ids = batch["input_ids"].to(device)
    rows = _rows(batch)
    if prompt is not None and not prompt.is_floating_point():
        prompt = embed(prompt.to(device))
    embeds = []
    for r, (n, k) in enumerate(rows):
        e = embed(ids[r, :n])
        if prompt is not None:
            e, _ = splice(prompt, e.unsqueeze(0), torch.ones(1, n, dtype=torch.long, device=device),
                          torch.tensor([k]))
            e = e[0]
        embeds.append(e)
    L = max(e.shape[0] for e in embeds)
    x = embeds[0].new_zeros(len(embeds), L, embeds[0].shape[-1])
    mask = torch.zeros(len(embeds), L, dtype=torch.long, device=device)
    for r, e in enumerate(embeds):
        x[r, L - e.shape[0]:] = e
        mask[r, L - e.shape[0]:] = 1
    kwargs = dict(max_new_tokens=settings.tokens, pad_token_id=eos_id,
                  **sampling(model, settings.temperature, settings.top_p, sample=settings.temperature > 0))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:  # sampled answers reproducible, the caller's random state untouched
            torch.manual_seed(seed)
        out = model.generate(inputs_embeds=x, attention_mask=mask, **kwargs)
    answers = []
    for g in out.tolist():  # with inputs_embeds, generate returns the new tokens only
        stop = g.index(eos_id) if eos_id is not None and eos_id in g else None
        answers.append(g if stop is None else g[: stop + 1])
    return answers


def degenerate(answer: list[int], eos_id: Optional[int]) -> bool:
    """An answer the faithful objective gives no credit for: fewer than two tokens before
    its end, or (from eight tokens on) fewer distinct tokens than half its length."""
    content = answer[:-1] if answer and eos_id is not None and answer[-1] == eos_id else answer
    if len(content) < 2:
        return True
    return len(content) >= 8 and len(set(content)) < len(content) / 2


def end_tokens(tokenizer) -> torch.Tensor:
    """The token ids the faithful objective leaves out of both distributions: the
    tokenizer's special tokens (end of turn, end of text, padding, role markers)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return torch.tensor(sorted(ids), dtype=torch.long)


def repeat_rows(batch: dict, k: int) -> dict:
    """``batch`` with its rows stacked ``k`` times (one copy per answer writer)."""
    return {key: torch.cat([v] * k) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}


def with_answers(batch: dict, answers: list[list[int]], pad_id: int, eos_id: Optional[int] = None,
                 faithful: bool = False) -> dict:
    """``batch`` with each row's answer appended after its real tokens (right-padded) and
    ``score_mask`` ``[B, T]`` true exactly at the positions that predict an answer token
    (the row's last text token through the answer's second to last). ``faithful``: the
    position that predicts the end (``eos_id``) is not scored, nor is any position of a
    :func:`degenerate` answer."""
    rows = _rows(batch)
    if len(answers) != len(rows):
        raise FinediffError(f"{len(answers)} answers for a batch of {len(rows)} texts")
    T = max(n + len(a) for (n, _), a in zip(rows, answers))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    score = torch.zeros((len(rows), T), dtype=torch.bool)
    for r, ((n, _), a) in enumerate(zip(rows, answers)):
        ids[r, :n] = batch["input_ids"][r, :n].cpu()
        ids[r, n:n + len(a)] = torch.tensor(a, dtype=torch.long)
        mask[r, :n + len(a)] = 1
        if not faithful:
            score[r, n - 1:n - 1 + len(a)] = True
        elif not degenerate(a, eos_id):
            score[r, n - 1:n - 1 + len(a) - int(a[-1] == eos_id)] = True
    device = batch["input_ids"].device
    out = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "score_mask": score.to(device)}
    if batch.get("prompt_pos") is not None:
        out["prompt_pos"] = batch["prompt_pos"]
    return out


def writers(pair, settings: AnswerSettings) -> list:
    """The models whose answers the objective reads: the finetuned one, and (faithful) the base."""
    return [pair.finetuned, pair.base] if settings.faithful else [pair.finetuned]


def scored_batch(pair, batch: dict, answers: list[list[list[int]]], settings: AnswerSettings) -> dict:
    """``batch`` once per writer, each copy with that writer's ``answers`` appended and
    scored (and, faithful, the tokens to leave out of the divergence)."""
    tok = pair.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = with_answers(repeat_rows(batch, len(answers)), [a for side in answers for a in side], pad,
                       tok.eos_token_id, settings.faithful)
    if settings.faithful:
        out["exclude"] = end_tokens(tok).to(out["input_ids"].device)
    return out


def answer_batch(pair, batch: dict, prompt: Optional[torch.Tensor] = None,
                 settings: AnswerSettings = AnswerSettings(), seed: Optional[int] = None) -> dict:
    """``batch`` with the finetuned model's answers (faithful: and the base's, as a second
    copy of the rows), made with ``prompt`` in place, appended and scored: the input of the
    answer objective."""
    eos = pair.tokenizer.eos_token_id
    answers = [generate_answers(m, batch, prompt, settings, eos, seed) for m in writers(pair, settings)]
    return scored_batch(pair, batch, answers, settings)


class AnswerCache:
    """On-policy answers, each used until it is ``settings.refresh_every`` steps old.

    Keyed by a row's token ids, so a text's answer follows it across shuffled batches.
    :meth:`refresh` answers many texts at once (a training run calls it every
    ``refresh_every`` steps with all its texts); :meth:`batch` answers, in one ``generate``
    call, the rows whose answer is missing or stale, with the prompt as it is at that step.
    Sampled answers are seeded by ``seed + step``, so a run is reproducible.
    """

    def __init__(self, settings: AnswerSettings = AnswerSettings(), seed: int = 0):
        self.settings, self.seed = settings, seed
        self.answers: dict[tuple, tuple[list[list[int]], int]] = {}
        """Per text: each writer's answer (:func:`writers`) and the step it was made at."""
        self.generated = 0
        """Answers generated so far (a cost counter)."""

    @staticmethod
    def _keys(batch: dict) -> list[tuple]:
        return [tuple(batch["input_ids"][r, :n].tolist()) for r, (n, _) in enumerate(_rows(batch))]

    def _answer(self, pair, batch: dict, keys: list[tuple], rows: list[int], prompt: Optional[torch.Tensor],
                step: int) -> None:
        sub = {k: v[rows] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        new = [generate_answers(m, sub, None if prompt is None else prompt.detach(), self.settings,
                                pair.tokenizer.eos_token_id, seed=self.seed + step)
               for m in writers(pair, self.settings)]
        for i, r in enumerate(rows):
            self.answers[keys[r]] = ([side[i] for side in new], step)
        self.generated += len(rows)

    def due(self, step: int) -> bool:
        """Whether ``step`` is one at which a training run refreshes every answer at once."""
        return self.settings.batch_size > 0 and step % self.settings.refresh_every == 0

    def refresh(self, pair, items: list, collate_fn, prompt: Optional[torch.Tensor], step: int) -> None:
        """Answer every item (what a training loader's dataset holds, batched by
        ``collate_fn``) with ``prompt``, ``settings.batch_size`` items per ``generate`` call."""
        n = self.settings.batch_size
        for i in range(0, len(items), n):
            chunk = collate_fn(items[i:i + n])
            keys = self._keys(chunk)
            self._answer(pair, chunk, keys, list(range(len(keys))), prompt, step)

    def batch(self, pair, batch: dict, prompt: Optional[torch.Tensor], step: int) -> dict:
        keys = self._keys(batch)
        stale = [r for r, key in enumerate(keys) if key not in self.answers
                 or step - self.answers[key][1] >= self.settings.refresh_every]
        if stale:
            self._answer(pair, batch, keys, stale, prompt, step)
        per_text = [self.answers[key][0] for key in keys]
        return scored_batch(pair, batch, [list(side) for side in zip(*per_text)], self.settings)

    def state_dict(self) -> dict:
        """The cached answers (a checkpoint keeps them, so a resumed run scores the same ones)."""
        return {"answers": [[list(k), a, s] for k, (a, s) in self.answers.items()], "generated": self.generated}

    def load_state_dict(self, state: dict) -> None:
        # a checkpoint from before the faithful objective holds one answer per text
        self.answers = {tuple(k): ([list(x) for x in a] if a and isinstance(a[0], list) else [list(a)], int(s))
                        for k, a, s in state["answers"]}
        self.generated = int(state["generated"])
