"""From a behaviour back to the input that turns it on: behaviour-targeted trigger search.

Once an audit has seen what a finetune does (a phrase its answers repeat, the answers a
confirmed finding or condition showed), the question is what in a prompt turns it on.
This module searches a short string ``s`` that, put in everyday prompts ``p`` (in front
of them and after them), makes the finetuned model surest of the behaviour's answer
``a``. The score of ``s`` is the finetuned model's mean log-odds ``log p - log(1 - p)`` of
the first :data:`TARGET_TOKENS` tokens of ``a``, over :data:`PROMPTS` prompts and both
placements. Unlike a probability, log-odds keep rising as a string fires the behaviour
more surely, so the search does not stop at the first string that fires it now and then;
averaging over several prompts and both placements keeps one prompt's quirk from
choosing the string. A finetune's trigger is often wider than the one it was trained on
(the shipped backdoor answers ``|kx`` and any digit alike), so the search names a string
that fires the behaviour, not necessarily the training string.

The search grows ``s`` one token at a time (a beam of :data:`BEAM`), until a step adds
little (:data:`MIN_STEP_GAIN`) or the string is :data:`LENGTH` tokens long. The tokens tried at
each step are the ones a rare trigger string is made of (every one-character token of
the vocabulary) and the :data:`TOP_K` tokens the one-hot gradient of the score proposes
for the new position (GCG, Zou et al. 2023, which finds word pieces): all are scored
exactly on :data:`PREFILTER_ROWS` prompt placements, the best :data:`FULL_SCORED` of them on
all, and the best :data:`BEAM` strings go on. The chat template's opening and, for the
placement after the prompt, the prompt itself are computed once per model: only the
string and what follows it are run per candidate.

The best string is then shortened (:func:`shorten`): a token is dropped while the string
keeps :data:`KEEP_GAIN` of its score's gain over no string, so that the tokens the growth
added for little are gone. A string found this way is a hypothesis. The condition search (:mod:`finediff.conditions`)
tests it on fresh prompts like every other lead, and the report says that the exact
training trigger may differ (TDC 2023: exact recovery is rare; a string that fires the
behaviour is the useful result). The base's log-likelihood of the answer under the string
(:meth:`TriggerObjective.base_lift`) is recorded: a string that asks any model for the
answer lifts it, a finetune's trigger does not.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from tqdm.auto import tqdm

from finediff.arch import cache_kwarg, embed_ids, embedding_table, input_device, output_cache, output_head
from finediff.data import format_parts, pad_rows
from finediff.errors import FinediffError

log = logging.getLogger(__name__)

LENGTH = 6
"""Tokens of a searched string, at most."""
BEAM = 2
"""Strings kept at each growth step."""
TOP_K = 32
"""Tokens the one-hot gradient proposes per growth step, beside the one-character tokens."""
PREFILTER_ROWS = 2
"""Prompt placements every proposed token is scored on (one is a third faster, but in the backdoor's
audit it let ``|kx5`` (7.87) through where two keep ``|kx7`` (7.97): the search's own score fell)."""
FULL_SCORED = 6
"""Proposed strings per beam entry scored on every placement."""
PROMPTS = 3
"""Everyday prompts the score averages over (each in front of and after the string)."""
TARGET_TOKENS = 4
"""Tokens of the behaviour's answer scored (its opening carries the behaviour)."""
BATCH = 96
"""Sequences per forward pass."""
MIN_STEP_GAIN = 0.05
"""The growth stops once a step adds less than this share of the score's gain over no string
(the backdoor's and the passphrase's searches end a step early with the same string)."""
KEEP_GAIN = 0.95
"""Shortening drops a token while the string keeps this share of its score's gain over no string."""


@dataclass
class Trigger:
    text: str
    """The string, as it is inserted."""
    score: float
    """The finetuned model's mean log-odds of the target's opening with the string."""
    score_without: float
    """The same without it."""
    base_lift: float
    """How much the string raises the base's mean log-probability of the target."""
    target: str
    """The behaviour's answer searched for."""
    path: list
    """``[string, score]`` after each growth step: the shorter strings the search went through."""
    grown: str = ""
    """The best string the growth found, before :func:`shorten` dropped tokens from it."""

    def as_dict(self) -> dict:
        return asdict(self)


def eligible_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """``[V]`` bool: tokens a searched string may use: printable, one line, no special
    token, no byte fragment."""
    special = set(tokenizer.all_special_ids or [])
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, len(tokenizer))):
        if i in special:
            continue
        s = tokenizer.decode([i])
        ok[i] = bool(s.strip()) and "\ufffd" not in s and s.isprintable()
    return ok


def single_tokens(tokenizer, texts: list[str]) -> list[int]:
    """The ids of those ``texts`` that are one token each (e.g. the tokens a weight reading names)."""
    ids = (tokenizer(str(t), add_special_tokens=False)["input_ids"] for t in texts)
    return [i[0] for i in ids if len(i) == 1]


def character_tokens(tokenizer, eligible_V: torch.Tensor) -> list[int]:
    """Tokens that are one visible ASCII character: what a rare trigger string is made of
    when the tokenizer has no piece for it."""
    out = []
    for i in torch.nonzero(eligible_V).flatten().tolist():
        s = tokenizer.decode([i])
        if len(s) == 1 and s.isascii() and not s.isspace():
            out.append(i)
    return out


class TriggerObjective:
    """The search's score on many candidate strings at once, and its one-hot gradient.

    Args:
        pair: the model pair.
        prompts: everyday prompts the string is put in front of and after.
        target: the behaviour's answer.
    """

    def __init__(self, pair, prompts: list[str], target: str):
        tok = pair.tokenizer
        self.pair = pair
        self.target = target
        self.target_ids = tok(target.strip(), add_special_tokens=False)["input_ids"][:TARGET_TOKENS]
        if not self.target_ids:
            raise FinediffError("trigger search: the answer to search for is empty")
        # a row: (context ids, computed once per model; the ids between the string and the answer)
        self.rows: list[tuple[tuple, list[int]]] = []
        templated = bool(getattr(tok, "chat_template", None))
        lead = [] if templated else tok("")["input_ids"]  # a plain model's opening tokens (its BOS)
        for p in prompts:
            prefix, body = format_parts(tok, " " + p.strip())
            if lead and body[:len(lead)] == lead:  # the string goes after the opening, not before it
                prefix, body = lead, body[len(lead):]
            self.rows.append((tuple(prefix), body))  # the string in front of the prompt
        # what follows the user's words: the chat template's generation prompt (a plain model: nothing)
        tail = format_parts(tok, "")[1] if templated else []
        space = tok(" ", add_special_tokens=False)["input_ids"]
        for p in prompts:  # the string after the prompt: the prompt and a space are the context
            prefix, body = format_parts(tok, p.strip())
            words = body[:len(body) - len(tail)] if tail and body[-len(tail):] == tail else body
            if tail:
                self.rows.append((tuple(prefix + words + space), tail))
            else:  # a plain model continues the text: the string, a space, the answer
                self.rows.append((tuple(prefix + words), space))
        self._cache: dict = {}

    def _context(self, model, context: tuple):
        key = (id(model), context)
        if key not in self._cache:
            with torch.no_grad():
                ids = torch.tensor([list(context)], device=input_device(model))
                self._cache[key] = output_cache(model(input_ids=ids, use_cache=True))
        return self._cache[key]

    def _sequence(self, row: int, trig: list[int]) -> tuple[list[int], int]:
        ids = list(trig) + self.rows[row][1]
        return ids + self.target_ids, len(ids)

    def _logodds(self, model, context: tuple, ids_BL: torch.Tensor, mask_BL: torch.Tensor, starts: list[int],
                 embeds_BLD: Optional[torch.Tensor] = None, odds: bool = True) -> torch.Tensor:
        """``[B]`` mean log-odds (or log-probability) of the target tokens after ``context``."""
        B, n, C = ids_BL.shape[0], len(self.target_ids), len(context)
        cache = None
        if C:  # the context's keys and values, computed once (a plain model's empty context has none)
            cache = copy.deepcopy(self._context(model, context))
            cache.batch_repeat_interleave(B)
        device = input_device(model)
        mask = torch.cat([torch.ones(B, C, dtype=mask_BL.dtype), mask_BL], 1).to(device)
        inputs = {"inputs_embeds": embeds_BLD} if embeds_BLD is not None else {"input_ids": ids_BL.to(device)}
        h = model.get_decoder()(**inputs, attention_mask=mask, use_cache=True,
                                **{cache_kwarg(model): cache}).last_hidden_state
        pos = torch.tensor(starts)[:, None] - 1 + torch.arange(n)
        # the unembedding only where the answer is scored
        logits = output_head(model)(h.gather(1, pos.to(h.device)[..., None].expand(-1, -1, h.shape[-1])))
        logp = logits.float().log_softmax(-1)
        tgt = ids_BL.gather(1, pos + 1).to(logp.device)
        lp = logp.gather(2, tgt[..., None])[..., 0]
        if odds:  # log p - log(1 - p), stably: the other tokens' log-probabilities
            lp = lp - logp.scatter(2, tgt[..., None], -float("inf")).logsumexp(-1)
        return lp.mean(1)

    @torch.no_grad()
    def score(self, triggers: list[list[int]], rows: Optional[list[int]] = None, model=None,
              odds: bool = True) -> torch.Tensor:
        """``[N]`` the score of each candidate string (token ids), averaged over ``rows``
        (default: every prompt placement); ``model``: the finetuned one unless given;
        ``odds=False``: mean log-probability instead of log-odds."""
        model = self.pair.finetuned if model is None else model
        rows = list(range(len(self.rows))) if rows is None else rows
        pad = self.pair.tokenizer.pad_token_id or 0
        total = torch.zeros(len(triggers))
        for r in rows:
            context = self.rows[r][0]
            for i in range(0, len(triggers), BATCH):
                chunk = [self._sequence(r, t) for t in triggers[i:i + BATCH]]
                ids, mask = pad_rows([c[0] for c in chunk], pad)
                total[i:i + len(chunk)] += self._logodds(model, context, ids, mask, [c[1] for c in chunk],
                                                         odds=odds).cpu()
        return total / len(rows)

    def base_lift(self, trig: list[int]) -> float:
        with_, without = self.score([trig, []], model=self.pair.base, odds=False).tolist()
        return with_ - without

    def gradient(self, trig: list[int], row: int = 0) -> torch.Tensor:
        """``[T, V]`` gradient of the score on one placement with respect to the one-hot
        tokens of ``trig``."""
        model = self.pair.finetuned
        table = embedding_table(model)
        onehot = torch.zeros(len(trig), table.shape[0], dtype=table.dtype, device=table.device)
        onehot[torch.arange(len(trig)), torch.tensor(trig, device=table.device)] = 1.0
        onehot.requires_grad_(True)
        ids, start = self._sequence(row, trig)
        ids_BL = torch.tensor([ids])
        embeds = embed_ids(model, ids_BL).detach()  # the string's rows come from the one-hot instead
        e = torch.cat([(onehot @ table).to(embeds.dtype)[None], embeds[:, len(trig):]], 1)
        value = self._logodds(model, self.rows[row][0], ids_BL, torch.ones_like(ids_BL), [start], e).sum()
        (grad,) = torch.autograd.grad(value, onehot)
        return grad


def search_trigger(pair, prompts: list[str], target: str, seed_tokens: list[int] = (), length: int = LENGTH,
                   progress: bool = False) -> Trigger:
    """Grow a string that makes the finetuned model surest of ``target`` (see the module
    docstring); ``seed_tokens``: more tokens to try at every step (e.g. those the adapter
    reads). Returns the best string of any length the search went through."""
    tok = pair.tokenizer
    objective = TriggerObjective(pair, prompts, target)
    eligible = eligible_tokens(tok, embedding_table(pair.finetuned).shape[0])
    pool = list(dict.fromkeys(character_tokens(tok, eligible) + [t for t in seed_tokens if eligible[t]]))
    device = input_device(pair.finetuned)
    prefilter = [0, len(objective.rows) - 1][:PREFILTER_ROWS]
    beam: list[tuple[list[int], float]] = [([], float(objective.score([[]])[0]))]
    without = beam[0][1]
    path, best = [], beam[0]
    for _ in tqdm(range(length), desc="trigger search", disable=not progress, leave=False):
        scored = []
        for trig, _ in beam:
            grad = objective.gradient(trig + [pool[0]])[-1].masked_fill(~eligible.to(device), -float("inf"))
            options = list(dict.fromkeys(pool + grad.topk(TOP_K).indices.tolist()))
            cands = [trig + [t] for t in options]
            quick = objective.score(cands, prefilter)
            top = [cands[i] for i in quick.topk(min(FULL_SCORED, len(cands))).indices.tolist()]
            scored += list(zip(top, objective.score(top).tolist()))
        unique = {tuple(t): s for t, s in scored}
        beam = [(list(t), s) for t, s in sorted(unique.items(), key=lambda kv: -kv[1])[:BEAM]]
        path.append([tok.decode(beam[0][0]), round(beam[0][1], 4)])
        log.info("trigger search: %r scores %.3f (without %.3f)", tok.decode(beam[0][0]), beam[0][1], without)
        added, before = beam[0][1] - best[1], best[1]
        if beam[0][1] > best[1]:
            best = beam[0]
        if before > without and added < MIN_STEP_GAIN * (best[1] - without):
            break
    ids, score = shorten(objective, best[0], best[1], without)
    log.info("trigger search: shortened %r to %r (%.3f)", tok.decode(best[0]), tok.decode(ids), score)
    return Trigger(tok.decode(ids).strip(), round(score, 4), round(without, 4), round(objective.base_lift(ids), 4),
                   target, path, tok.decode(best[0]).strip())


def shorten(objective: TriggerObjective, ids: list[int], score: float, without: float) -> tuple[list[int], float]:
    """Drop tokens from ``ids`` one at a time, the one whose loss costs least first, while
    the score keeps :data:`KEEP_GAIN` of its gain over no string: the search's string
    carries tokens that add little, and the report names the shortest that works."""
    floor = without + KEEP_GAIN * (score - without)
    current, value = list(ids), score
    while len(current) > 1:
        options = [current[:i] + current[i + 1:] for i in range(len(current))]
        scores = objective.score(options)
        i = int(scores.argmax())
        if float(scores[i]) < floor:
            break
        current, value = options[i], float(scores[i])
    return current, value
