"""From a soft prompt to hard prompts: readable token sequences that keep its effect.

Every method optimises the same objective as the soft prompt, evaluated exactly on token
ids: the pair's mean divergence at the text positions when the prompt starts the user's
message, minus ``fluency_weight`` times the base model's mean negative log-likelihood of
the prompt (its log-perplexity, given the chat header), so results read as language.

* :func:`project` -- nearest allowed token to each soft-prompt vector by cosine (baseline);
* :func:`guided` -- readable tokens that follow what training added to the prompt: left
  to right, among the base model's likeliest next tokens, the one whose embedding points
  most along that vector's displacement from where it started;
* :func:`pez` -- PEZ: keep continuous embeddings, project them to the nearest tokens
  every step, take the gradient at the projection and apply it to the continuous ones;
* ``text`` -- the best natural-language start among the highest-divergence texts (their
  first tokens);
* :func:`gcg` -- GCG-style coordinate search: the gradient with respect to one-hot tokens
  ranks ``top_k`` swaps per position among the tokens the base model finds likely there
  (AutoDAN-style fluent candidates), ``n_candidates`` single swaps are evaluated exactly
  with the current prompt on part of the training texts, and the best is kept only if it
  improves the objective there; the result must beat its start on all training texts (the
  objective is measured, never trusted from the gradient). On the answer objective it can
  score every prompt over the answers given with it in place (on-policy), and a
  perplexity budget ranks prompts the base model reads within it first.

Many prompts are scored at once by :func:`prompt_divergences`, which runs each text's
chat header once and continues it with every prompt from its key/value cache.

Tokens are restricted to an allowed vocabulary (printable, no special or control tokens).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from finediff.answers import AnswerSettings, answer_batch
from finediff.arch import embedding_table, input_device, output_head
from finediff.divergence import batch_divergence, token_divergence
from finediff.errors import FinediffError
from finediff.io import read_jsonl

log = logging.getLogger(__name__)


@dataclass
class HardPrompt:
    """One hard prompt and how it measured."""

    method: str
    """``projection``, ``guided``, ``pez``, ``text`` or ``gcg``."""
    text: str
    """The decoded prompt (the start of a user message)."""
    token_ids: list[int]
    """Its token ids."""
    divergence: float
    """Mean divergence of the pair on the evaluation texts with this prompt."""
    divergence_no_prompt: float
    """The same texts without any prompt (the baseline it must beat)."""
    perplexity: float
    """The base model's perplexity of the prompt given the chat header (fluency)."""
    objective: float
    """``divergence - fluency_weight * log(perplexity)`` as optimised."""

    def as_dict(self) -> dict:
        return asdict(self)


def read_hard_prompts(path: str | Path) -> list[HardPrompt]:
    """The rows of a ``hard_prompts.jsonl``; a bad line is a one-line error naming the
    file and the line (checked before any model work starts)."""
    keys = tuple(f.name for f in fields(HardPrompt))
    out = []
    for lineno, row in read_jsonl(path):
        if not isinstance(row, dict) or set(keys) - set(row):
            missing = sorted(set(keys) - set(row)) if isinstance(row, dict) else list(keys)
            raise FinediffError(f"{path}:{lineno}: not a hard prompt (missing {', '.join(missing)})")
        ids = row["token_ids"]
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
            raise FinediffError(f"{path}:{lineno}: 'token_ids' must be a non-empty list of integers")
        if not isinstance(row["text"], str):
            raise FinediffError(f"{path}:{lineno}: 'text' must be a string")
        out.append(HardPrompt(**{k: row[k] for k in keys}))
    return out


def allowed_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """``[V]`` bool: tokens that decode to printable ASCII with at least one letter or
    digit and are not special tokens (named ones, and added tokens marked special, such
    as SmolLM2's ``<file_sep>``)."""
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, len(tokenizer))):
        if i in special:
            continue
        s = tokenizer.decode([i])
        if s and s.isascii() and s.isprintable() and any(c.isalnum() for c in s):
            mask[i] = True
    return mask


def project(prompt_PD: torch.Tensor, embed_weight_VD: torch.Tensor, allowed_V: torch.Tensor) -> torch.Tensor:
    """Nearest allowed token (cosine similarity) to each prompt vector: ``[P]`` ids."""
    sims = F.normalize(prompt_PD.float(), dim=-1) @ F.normalize(embed_weight_VD.float(), dim=-1).T
    sims[:, ~allowed_V.to(sims.device)] = -float("inf")
    return sims.argmax(dim=-1)


@torch.no_grad()
def guided(base, header: list[int], prompt_PD: torch.Tensor, start_PD: Optional[torch.Tensor],
           allowed_V: torch.Tensor, fluent_top: int = 128) -> torch.Tensor:
    """``[P]`` ids: the prompt decoded left to right, each token chosen among the
    ``fluent_top`` allowed tokens the base model finds likeliest next (after ``header``
    and the tokens chosen so far; any allowed token where there is no context) as the one
    whose centred embedding has the highest cosine with the vector's displacement
    ``prompt - start`` (what training added; the prompt itself when ``start`` is None).

    Projection reads the whole vector, which stays nearest to the token it started from
    when training moves it along directions no token embedding points to; the displacement
    is what the objective asked for, and the fluent candidates keep the result readable.
    """
    table = embedding_table(base).float()
    device = table.device
    table = F.normalize(table - table.mean(0), dim=-1)
    delta = prompt_PD.float().to(device) - (start_PD.float().to(device) if start_PD is not None else 0.0)
    sims = F.normalize(delta, dim=-1) @ table.T  # [P, V]
    allowed = allowed_V.to(device)
    ids: list[int] = []
    for p in range(prompt_PD.shape[0]):
        context = header + ids
        keep = allowed
        if context and fluent_top:
            logits = base(input_ids=torch.tensor([context], device=device)).logits[0, -1].float()
            top = logits.masked_fill(~allowed, -float("inf")).topk(min(fluent_top, int(allowed.sum()))).indices
            keep = torch.zeros_like(allowed)
            keep[top] = True
        ids.append(int(sims[p].masked_fill(~keep, -float("inf")).argmax()))
    return torch.tensor(ids, device=device)


def _header(pair, batch: dict) -> list[int]:
    """The chat header before the user's words (the context the prompt's fluency is judged in)."""
    k = int(batch["prompt_pos"][0]) if "prompt_pos" in batch else 0
    return batch["input_ids"][0, :k].tolist()


def prompt_nll(base, header: list[int], prompt_P: torch.Tensor, embeds_PD: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Base model's mean NLL of the prompt tokens after ``header``; differentiable through
    ``embeds_PD`` when given (the prompt's input embeddings)."""
    device = prompt_P.device
    embed = base.get_input_embeddings()
    head = torch.tensor(header, dtype=torch.long, device=device)
    if embeds_PD is None or not embeds_PD.is_floating_point():
        embeds_PD = embed(prompt_P)
    x = torch.cat([embed(head), embeds_PD.to(embed.weight.dtype)]).unsqueeze(0)
    logits = base(inputs_embeds=x).logits[0].float()
    # positions len(header)-1 ... end-1 predict the prompt tokens
    start = len(header) - 1
    if start < 0:  # no header: the first token has no context and is not scored
        logits, targets = logits[:-1], prompt_P[1:]
    else:
        logits, targets = logits[start:-1], prompt_P
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def batches_divergence(pair, ids_P: Optional[torch.Tensor], batches: list[dict], kind: str = "kl_ft_base",
                       temperature: float = 1.0, chunk_size: int = 256) -> float:
    """The pair's divergence on ``batches`` with the hard prompt ``ids_P`` (None: no
    prompt), each batch weighted by its tokens."""
    total = weight = 0.0
    for b in batches:
        n = float(b.get("score_mask", b["attention_mask"]).sum())
        total += n * batch_divergence(pair, b, ids_P, kind, temperature, chunk_size).item()
        weight += n
    return total / weight


def answered(pair, ids_P: Optional[torch.Tensor], batches: list[dict],
             answers: Optional[AnswerSettings]) -> list[dict]:
    """``batches`` as they are (text positions), or with the finetuned model's answers
    given with ``ids_P`` in place appended and scored (the answer objective)."""
    return batches if answers is None else [answer_batch(pair, b, ids_P, answers) for b in batches]


@torch.no_grad()
def evaluate(pair, ids_P: torch.Tensor, batches: list[dict], kind: str = "kl_ft_base",
             temperature: float = 1.0, fluency_weight: float = 0.0, method: str = "",
             chunk_size: int = 256, divergence_no_prompt: Optional[float] = None,
             answers: Optional[AnswerSettings] = None) -> HardPrompt:
    """Measure a hard prompt on ``batches``: divergence with and without it (the latter
    computed unless given), perplexity. With ``answers``, each is read over the answers
    the finetuned model gives in that setting (on-policy)."""
    div = batches_divergence(pair, ids_P, answered(pair, ids_P, batches, answers), kind, temperature, chunk_size)
    if divergence_no_prompt is None:
        divergence_no_prompt = batches_divergence(pair, None, answered(pair, None, batches, answers), kind,
                                                  temperature, chunk_size)
    nll = prompt_nll(pair.base, _header(pair, batches[0]), ids_P).item()
    ids = ids_P.tolist()
    return HardPrompt(method, pair.tokenizer.decode(ids), ids, div, divergence_no_prompt, math.exp(nll),
                      div - fluency_weight * nll)


def _objective(pair, embeds_PD: torch.Tensor, ids_P: torch.Tensor, batch: dict, kind: str,
               temperature: float, fluency_weight: float, chunk_size: int) -> torch.Tensor:
    div = batch_divergence(pair, batch, embeds_PD, kind, temperature, chunk_size)
    if fluency_weight:
        div = div - fluency_weight * prompt_nll(pair.base, _header(pair, batch), ids_P, embeds_PD)
    return div


def pez(pair, prompt_PD: torch.Tensor, batches: list[dict], allowed_V: torch.Tensor, steps: int = 20,
        lr: float = 0.02, kind: str = "kl_ft_base", temperature: float = 1.0, fluency_weight: float = 0.0,
        chunk_size: int = 256, progress: bool = True) -> torch.Tensor:
    """PEZ from ``prompt_PD``; returns the best projected ids seen (by the exact objective)."""
    weight = embedding_table(pair.base)
    cont = torch.nn.Parameter(prompt_PD.detach().clone().float())
    opt = torch.optim.AdamW([cont], lr=lr, weight_decay=0.0)
    best_ids, best = None, -float("inf")
    for step in tqdm(range(steps), desc="PEZ", disable=not progress):
        ids = project(cont.detach(), weight, allowed_V)
        proj = weight[ids].detach().clone().requires_grad_(True)
        batch = batches[step % len(batches)]
        obj = _objective(pair, proj, ids, batch, kind, temperature, fluency_weight, chunk_size)
        (-obj).backward()
        if obj.item() > best:
            best, best_ids = obj.item(), ids.clone()
        cont.grad = proj.grad.to(cont.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return best_ids


def _hidden_after(model, header_H: torch.Tensor, rows_CL: torch.Tensor, mask_CL: torch.Tensor) -> torch.Tensor:
    """Final hidden states ``[C, L, D]`` of ``rows`` continuing one shared ``header``.

    The header runs once (batch 1) and its key/value cache is repeated for every row, so
    candidates that differ only after the header cost only their own tokens. A model that
    returns no cache gets the header in front of every row instead (same result).
    """
    home = rows_CL.device  # the hidden states go back there (the model may be placed elsewhere)
    device = input_device(model)
    header_H, rows_CL, mask_CL = header_H.to(device), rows_CL.to(device), mask_CL.to(device)
    return _hidden_after_on_device(model, header_H, rows_CL, mask_CL).to(home)


def _hidden_after_on_device(model, header_H: torch.Tensor, rows_CL: torch.Tensor, mask_CL: torch.Tensor) -> torch.Tensor:
    decoder, embed = model.get_decoder(), model.get_input_embeddings()
    if header_H.numel() == 0:
        return decoder(inputs_embeds=embed(rows_CL), attention_mask=mask_CL, use_cache=False).last_hidden_state
    mask = torch.cat([mask_CL.new_ones(rows_CL.shape[0], header_H.numel()), mask_CL], dim=1)
    cache = decoder(inputs_embeds=embed(header_H.unsqueeze(0)), use_cache=True).past_key_values
    if cache is None:  # no cache (e.g. gradient checkpointing in train mode): run the header with every row
        full = torch.cat([header_H.unsqueeze(0).expand(rows_CL.shape[0], -1), rows_CL], dim=1)
        out = decoder(inputs_embeds=embed(full), attention_mask=mask, use_cache=False).last_hidden_state
        return out[:, header_H.numel():]
    cache.batch_repeat_interleave(rows_CL.shape[0])
    return decoder(inputs_embeds=embed(rows_CL), attention_mask=mask, past_key_values=cache,
                   use_cache=True).last_hidden_state


@torch.no_grad()
def prompt_divergences(pair, prompts: list[torch.Tensor], batches: list[dict], kind: str = "kl_ft_base",
                       temperature: float = 1.0) -> torch.Tensor:
    """``[C]``: the pair's mean divergence at the text positions of ``batches`` (or their
    ``score_mask``'s) with each of ``prompts`` (token ids, any lengths) at the start of
    the user's message.

    The same quantity as :func:`finediff.divergence.pair_divergence` with a hard prompt,
    token-weighted over all texts, but for many prompts at once: each text's header runs
    once and all prompts continue it as one batch (1.3x faster than splicing every prompt
    into every row on the real pair: ``benchmarks/hard_prompts.py``).
    """
    C = len(prompts)
    total = torch.zeros(C, dtype=torch.float64)
    count = torch.zeros(C, dtype=torch.float64)
    heads = output_head(pair.finetuned), output_head(pair.base)
    device = pair.base.get_input_embeddings().weight.device
    pad = pair.tokenizer.pad_token_id if pair.tokenizer.pad_token_id is not None else 0
    for b in batches:
        pos, scored = b.get("prompt_pos"), b.get("score_mask")
        for r in range(b["input_ids"].shape[0]):
            n = int(b["attention_mask"][r].sum())
            k = int(pos[r]) if pos is not None else 0
            header, body = b["input_ids"][r, :k].to(device), b["input_ids"][r, k:n].to(device)
            if body.numel() == 0:
                continue
            L = max(len(p) for p in prompts) + body.numel()
            rows = torch.full((C, L), pad, dtype=torch.long, device=device)
            mask = torch.zeros((C, L), dtype=torch.long, device=device)
            score = torch.zeros((C, L), dtype=torch.bool, device=device)
            for i, p in enumerate(prompts):
                P = len(p)
                rows[i, :P], rows[i, P:P + body.numel()] = p.to(device), body
                mask[i, :P + body.numel()] = 1
                score[i, P:P + body.numel()] = True if scored is None else scored[r, k:n].to(device)
            h_ft = _hidden_after(pair.finetuned, header, rows, mask)
            h_base = _hidden_after(pair.base, header, rows, mask)
            div = token_divergence(heads[0](h_ft[score]), heads[1](h_base[score]), kind, temperature,
                                   b.get("exclude")).double().cpu()
            owner = torch.arange(C).unsqueeze(1).expand(C, L)[score.cpu()]
            total.index_add_(0, owner, div)
            count.index_add_(0, owner, torch.ones_like(div))
    return (total / count.clamp(min=1)).float()


@torch.no_grad()
def prompt_objectives(pair, prompts: list[torch.Tensor], batches: list[dict], kind: str = "kl_ft_base",
                      temperature: float = 1.0, fluency_weight: float = 0.0) -> torch.Tensor:
    """``[C]``: the search objective of each prompt, ``divergence - fluency_weight * NLL``."""
    div = prompt_divergences(pair, prompts, batches, kind, temperature)
    if not fluency_weight:
        return div
    header = _header(pair, batches[0])
    nll = torch.tensor([prompt_nll(pair.base, header, p.to(pair.base.device)).item() for p in prompts])
    return div - fluency_weight * nll


@torch.no_grad()
def fluent_tokens(base, header: list[int], ids_P: torch.Tensor, allowed_V: torch.Tensor, n: int) -> torch.Tensor:
    """``[P, V]`` bool: at each prompt position, the ``n`` allowed tokens the base model
    finds likeliest there given the header and the prompt before it. A position with no
    context (no header, first token) allows every allowed token."""
    device = ids_P.device
    x = torch.tensor(header + ids_P.tolist(), dtype=torch.long, device=device).unsqueeze(0)
    logits = base(input_ids=x).logits[0].float()
    keep = torch.zeros(len(ids_P), logits.shape[-1], dtype=torch.bool, device=device)
    allowed = allowed_V.to(device)
    for p in range(len(ids_P)):
        at = len(header) + p - 1  # the position that predicts prompt token p
        if at < 0:
            keep[p] = allowed
            continue
        row = logits[at].masked_fill(~allowed, -float("inf"))
        keep[p, row.topk(min(n, int(allowed.sum()))).indices] = True
    return keep


@torch.no_grad()
def token_nlls(base, header: list[int], ids_P: torch.Tensor) -> torch.Tensor:
    """``[P]``: the base model's NLL of each prompt token after ``header`` and the prompt
    before it (0 for a first token with no context)."""
    device = input_device(base)
    x = torch.tensor(header + ids_P.tolist(), dtype=torch.long, device=device).unsqueeze(0)
    logp = base(input_ids=x).logits[0].float().log_softmax(-1)
    out = torch.zeros(len(ids_P))
    for p, t in enumerate(ids_P.tolist()):
        at = len(header) + p - 1
        if at >= 0:
            out[p] = -logp[at, t].item()
    return out


@torch.no_grad()
def bridging_tokens(base, header: list[int], ids_P: torch.Tensor, eligible_V: torch.Tensor, pos: int, n: int,
                    pool: int = 2048, chunk: int = 512) -> list[int]:
    """Up to ``n`` tokens that read best at prompt position ``pos``: among the ``pool``
    eligible tokens the base model finds likeliest there, those maximising
    ``log p(t | before) + log p(next | before, t)``, both exact (one batched step on the
    cached context per chunk). The second term is what a one-hot gradient misses: a
    word-piece reads well only after the right start of its word, and that start is
    rarely likely on its own."""
    device = input_device(base)
    before = header + ids_P[:pos].tolist()
    eligible = eligible_V.to(device)
    if before:
        logp = base(input_ids=torch.tensor([before], device=device)).logits[0, -1].float().log_softmax(-1)
    else:
        logp = torch.zeros(eligible.shape[0], device=device)
    logp = logp.masked_fill(~eligible, -float("inf"))
    k = min(pool, int(eligible.sum()))
    if k == 0:
        return []
    first = logp.topk(k)
    score = first.values.clone()
    if pos + 1 < len(ids_P):
        nxt = int(ids_P[pos + 1])
        head, context = output_head(base), torch.tensor(before, dtype=torch.long, device=device)
        seconds = []
        for c in first.indices.split(chunk):
            rows = torch.stack([c, torch.full_like(c, nxt)], dim=1)
            h = _hidden_after_on_device(base, context, rows, torch.ones_like(rows))
            seconds.append(head(h[:, 0]).float().log_softmax(-1)[:, nxt])
        score = score + torch.cat(seconds)
    return first.indices[score.topk(min(n, k)).indices].tolist()


def _ranked(scores_C: torch.Tensor, nll_C: Optional[torch.Tensor], max_nll: Optional[float],
            walk: bool = False) -> torch.Tensor:
    """``[C]`` keys to maximise: the objective, or under a perplexity budget (``max_nll``,
    its log) the objective among the prompts within it, which all rank above those outside
    it, and those by their perplexity (a search outside the budget first walks into it).
    With ``walk`` (row 0 is the current prompt) the prompts outside the budget that read
    better than the current one rank next, by their objective: each step lowers the
    perplexity while keeping as much of the effect as it can."""
    if max_nll is None or nll_C is None:
        return scores_C
    inside = nll_C <= max_nll
    keys = torch.where(inside, scores_C.double() + 2e6, -nll_C.double())
    if walk:
        keys = torch.where(~inside & (nll_C < nll_C[0]), scores_C.double() + 1e6, keys)
    return keys


def _on_policy_objectives(pair, prompts: list[torch.Tensor], batches: list[dict], answers: AnswerSettings,
                          kind: str, temperature: float, fluency_weight: float, chunk_size: int) -> torch.Tensor:
    """``[C]``: each prompt's objective over the answers the finetuned model gives with
    *that* prompt in place (``batches`` are texts without answers)."""
    out = []
    for p in prompts:
        div = batches_divergence(pair, p, answered(pair, p, batches, answers), kind, temperature, chunk_size)
        out.append(div - fluency_weight * prompt_nll(pair.base, _header(pair, batches[0]), p).item())
    return torch.tensor(out)


def gcg(pair, init_ids_P: torch.Tensor, batches: list[dict], allowed_V: torch.Tensor, steps: int = 8,
        top_k: int = 32, n_candidates: int = 12, kind: str = "kl_ft_base", temperature: float = 1.0,
        fluency_weight: float = 0.02, chunk_size: int = 256, seed: int = 0, progress: bool = True,
        fluent_top: int = 128, batches_per_step: Optional[int] = None, answers: Optional[AnswerSettings] = None,
        max_perplexity: Optional[float] = None, own_answers: bool = False, walk: bool = False,
        bridging: int = 0) -> torch.Tensor:
    """GCG-style search from ``init_ids_P``; returns the best ids found.

    Each step: the gradient of the objective with respect to one-hot tokens ranks swaps;
    at each position only the ``fluent_top`` tokens the base model finds likeliest there
    are eligible (0: any allowed token), and the ``top_k`` of those the gradient favours
    are the candidates. ``n_candidates`` distinct single swaps are drawn and scored
    exactly (:func:`prompt_objectives`) with the current prompt on ``batches_per_step``
    of ``batches`` (taken in turn; None: half of them, at least one); the best replaces the
    current prompt if it scores higher there. At the end the result is scored on all
    ``batches`` and returned only if it beats the start, so the search never ends below
    the start on ``batches``.

    With ``answers`` the search is on-policy: ``batches`` are texts without answers, each
    step scores the candidates over the answers the finetuned model gives with the current
    prompt in place, and the final comparison scores the start and the result each over
    its own answers, as the held-out evaluation does; with ``own_answers`` every candidate
    too is scored over the answers given with it in place (one more answer per candidate
    and text each step), so a swap that changes what the finetuned model answers is
    judged by that answer. With ``max_perplexity`` every comparison prefers prompts whose
    base perplexity is within it (:func:`_ranked`); with ``walk`` as well, outside it each
    step takes the best of the swaps that lower the perplexity. ``bridging`` more
    candidates each step are chosen for how they read, not by the gradient: at the token
    the base model finds least likely and at the one before it,
    :func:`bridging_tokens` (the swaps that make that stretch of the prompt read best).
    """
    weight = embedding_table(pair.base)
    g = torch.Generator().manual_seed(seed)
    header = _header(pair, batches[0])
    start = ids = init_ids_P.clone().to(weight.device)
    V = weight.shape[0]
    allowed = allowed_V.to(weight.device)
    per_step = min(len(batches), batches_per_step or max(1, len(batches) // 2))
    max_nll = math.log(max_perplexity) if max_perplexity else None

    def nll(prompts: list[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if max_nll is None else torch.tensor(
            [prompt_nll(pair.base, header, p.to(weight.device)).item() for p in prompts])

    bar = tqdm(range(steps), desc="GCG", disable=not progress)
    for step in bar:
        texts = [batches[(step * per_step + j) % len(batches)] for j in range(per_step)]
        on = answered(pair, ids, texts, answers)  # on-policy: the answers given with the current prompt
        one_hot = F.one_hot(ids, V).to(weight.dtype).requires_grad_(True)
        obj = _objective(pair, one_hot @ weight, ids, on[0], kind, temperature, fluency_weight, chunk_size)
        (grad,) = torch.autograd.grad(obj, one_hot)
        eligible = fluent_tokens(pair.base, header, ids, allowed, fluent_top) if fluent_top else \
            allowed.unsqueeze(0).expand(len(ids), -1).clone()
        eligible[torch.arange(len(ids)), ids] = False  # a swap must change the token
        top = grad.float().masked_fill(~eligible, -float("inf")).topk(top_k, dim=-1)
        seen, cands = set(), []
        if bridging:
            worst = int(token_nlls(pair.base, header, ids).argmax())
            places = [worst - 1, worst] if worst > 0 else [worst]
            for i, pos in enumerate(places):
                share = bridging // len(places) + (i < bridging % len(places))
                for token in bridging_tokens(pair.base, header, ids, eligible[pos], pos, share):
                    seen.add((pos, token))
                    cand = ids.clone()
                    cand[pos] = token
                    cands.append(cand)
        want = n_candidates + len(cands)  # the gradient's draws come on top
        for _ in range(n_candidates * 4):
            if len(cands) == want:
                break
            pos = int(torch.randint(0, len(ids), (1,), generator=g))
            j = int(torch.randint(0, top_k, (1,), generator=g))
            token = int(top.indices[pos, j])
            if not torch.isfinite(top.values[pos, j]) or (pos, token) in seen:
                continue
            seen.add((pos, token))
            cand = ids.clone()
            cand[pos] = token
            cands.append(cand)
        if not cands:
            break
        scores = (_on_policy_objectives(pair, [ids] + cands, texts, answers, kind, temperature, fluency_weight,
                                        chunk_size) if own_answers and answers is not None else
                  prompt_objectives(pair, [ids] + cands, on, kind, temperature, fluency_weight))
        i = int(_ranked(scores, nll([ids] + cands), max_nll, walk).argmax())
        if i > 0:
            ids = cands[i - 1]
        bar.set_postfix(objective=f"{float(scores[i]):.4f}")
    if ids.equal(start):
        return ids
    ends = [start, ids]
    final = (prompt_objectives(pair, ends, batches, kind, temperature, fluency_weight) if answers is None else
             _on_policy_objectives(pair, ends, batches, answers, kind, temperature, fluency_weight, chunk_size))
    before, after = _ranked(final, nll(ends), max_nll, walk).tolist()
    return ids if after > before else start


def text_prompt_ids(tokenizer, text: str, max_tokens: int) -> Optional[torch.Tensor]:
    """A text's first ``max_tokens`` token ids as a hard prompt (None if empty or if it
    holds a special token)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if not ids or set(ids) & set(tokenizer.all_special_ids):
        return None
    return torch.tensor(ids)


DERIVED = ("projection", "guided", "pez")
"""The methods whose prompt is derived from the soft prompt (``text`` starts are not)."""
METHODS = DERIVED + ("text", "gcg")


def find_hard_prompts(pair, prompt_PD: torch.Tensor, train_batches: list[dict], eval_batches: list[dict],
                      methods: tuple[str, ...] = METHODS, kind: str = "kl_ft_base",
                      temperature: float = 1.0, fluency_weight: float = 0.02, pez_steps: int = 20,
                      gcg_steps: int = 4, top_k: int = 32, n_candidates: int = 12, chunk_size: int = 256,
                      seed: int = 0, progress: bool = True, init_texts: tuple[str, ...] = (),
                      init_tokens: int = 16, n_starts: int = 12, fluent_top: int = 128,
                      answers: Optional[AnswerSettings] = None, gcg_start: str = "derived",
                      start_PD: Optional[torch.Tensor] = None, on_policy: Optional[list[dict]] = None,
                      max_perplexity: Optional[float] = None, own_answers: bool = False,
                      budget_steps: int = 0, budget_fluent_top: int = 0, budget_bridging: int = 0,
                      budget_n_candidates: Optional[int] = None) -> list[HardPrompt]:
    """Run the chosen methods from a learned soft prompt; return hard prompts measured on
    ``eval_batches`` (held-out texts), best divergence first.

    ``init_texts`` (method ``text``) are candidate natural-language starts. They are
    ranked by the pair's divergence on each text alone; the first ``init_tokens`` tokens
    of the ``n_starts`` highest are scored as prompts on the training texts, and the best
    is kept. ``start_PD`` is the soft prompt before training (method ``guided``). GCG
    starts from whichever of the projection, guided and PEZ prompts (``gcg_start="any"``:
    and the text start) scores best on the training texts, so what it returns is derived
    from the soft prompt (or, with ``any``, a fluent start that already diverges is refined).

    With ``answers`` (the answer objective), ``train_batches`` carry their answers and
    ``score_mask`` already; every prompt is measured on ``eval_batches`` over the answers
    the finetuned model gives with it in place. ``on_policy`` (the training texts without
    answers) makes GCG's choice of start and its search on-policy: every prompt is scored
    over the answers given with it (:func:`gcg`), not over the soft prompt's answers.
    ``max_perplexity`` is GCG's perplexity budget; ``own_answers`` scores every GCG
    candidate over its own answers (on-policy search only). With ``budget_steps`` the
    budget is not imposed on the search: GCG first searches freely for ``gcg_steps``, then
    walks its result into the budget for ``budget_steps`` more (swaps to the
    ``budget_fluent_top`` tokens the base model finds likeliest; 0: any allowed token),
    while outside the budget taking the best of the swaps that lower the perplexity (a
    strong but unreadable prompt becomes a readable one that keeps what it can of the
    effect); ``budget_n_candidates`` (None: ``n_candidates``) are the gradient's swaps
    each walk step, and ``budget_bridging`` adds that many chosen for how they read
    (:func:`gcg`'s ``bridging``).
    """
    from finediff.divergent_dataset import rank_texts

    weight = embedding_table(pair.base)
    allowed = allowed_tokens(pair.tokenizer, weight.shape[0])
    found: dict[str, torch.Tensor] = {"projection": project(prompt_PD, weight, allowed)}
    if "guided" in methods:
        found["guided"] = guided(pair.base, _header(pair, train_batches[0]), prompt_PD, start_PD, allowed, fluent_top)
    if "pez" in methods:
        found["pez"] = pez(pair, prompt_PD, train_batches, allowed, pez_steps, kind=kind, temperature=temperature,
                           fluency_weight=fluency_weight, chunk_size=chunk_size, progress=progress)
    if "text" in methods and init_texts:
        ranked = [t for _, t in rank_texts(pair, list(init_texts), "text" if answers is None else "response",
                                           progress=progress, kind=kind)]
        starts = [ids for ids in (text_prompt_ids(pair.tokenizer, t, init_tokens) for t in ranked)
                  if ids is not None][:n_starts]
        if starts:
            scores = prompt_objectives(pair, starts, train_batches, kind, temperature, fluency_weight)
            found["text"] = starts[int(scores.argmax())]
    div0 = batches_divergence(pair, None, answered(pair, None, eval_batches, answers), kind, temperature, chunk_size)
    results = {m: evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, m, chunk_size, div0, answers)
               for m, ids in found.items() if m in methods}
    if "gcg" in methods:
        names = [m for m in found if gcg_start == "any" or m in DERIVED]
        starts = [found[m] for m in names]
        search = on_policy if on_policy is not None and answers is not None else None
        scores = (prompt_objectives(pair, starts, train_batches, kind, temperature, fluency_weight) if search is None
                  else _on_policy_objectives(pair, starts, search, answers, kind, temperature, fluency_weight,
                                             chunk_size))
        if max_perplexity:  # a start within the budget first
            header = _header(pair, train_batches[0])
            nll = torch.tensor([prompt_nll(pair.base, header, p).item() for p in starts])
            scores = _ranked(scores, nll, math.log(max_perplexity))
        start = found[names[int(scores.argmax())]]
        walk = bool(budget_steps and max_perplexity)

        def search_from(ids_P: torch.Tensor, steps: int, top: int, limit: Optional[float], walking: bool):
            n = budget_n_candidates if walking and budget_n_candidates is not None else n_candidates
            return gcg(pair, ids_P, search or train_batches, allowed, steps, top_k, n, kind, temperature,
                       fluency_weight, chunk_size, seed, progress, top,
                       answers=answers if search is not None else None, max_perplexity=limit,
                       own_answers=own_answers, walk=walking, bridging=budget_bridging if walking else 0)

        ids = search_from(start, gcg_steps, fluent_top, None if walk else max_perplexity, False)
        if walk:  # then into the budget, keeping what it can of the effect
            ids = search_from(ids, budget_steps, budget_fluent_top, max_perplexity, True)
        results["gcg"] = evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, "gcg", chunk_size, div0,
                                  answers)
    return sorted(results.values(), key=lambda h: h.divergence, reverse=True)
