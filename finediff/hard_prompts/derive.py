"""Hard prompts derived from the soft prompt: :func:`project` (nearest token),
:func:`guided` (fluent tokens along what training added) and :func:`pez` (PEZ)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from finediff.arch import embedding_table
from finediff.hard_prompts.scoring import _objective


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


DERIVED = ("projection", "guided", "pez")
"""The methods whose prompt is derived from the soft prompt (``text`` starts are not)."""
