"""The soft prompt: ``n`` trainable virtual tokens spliced in front of a text's embeddings.

Shapes: ``P`` prompt tokens, ``D`` hidden size, ``B`` batch, ``T`` text length.
With SmolLM2 (D = 576) the default 8 tokens are 8 x 576 = 4,608 trainable parameters
against 2 x 134.5M frozen ones.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Optional

import torch
from torch import nn

from finediff import names
from finediff.arch import scaled_table
from finediff.errors import FinediffError
from finediff.io import load_torch


class PromptInit(str, Enum):
    """How the prompt's embeddings start."""

    TEXT = "text"
    """The token embeddings of ``init_text``, repeated or cut to ``n_tokens``."""
    VOCAB = "vocab"
    """Embeddings of random vocabulary tokens."""
    RANDOM = "random"
    """Random directions rescaled to the mean norm of real token embeddings (not N(0, 1),
    whose norm, sqrt(D) = 24 for D = 576, is far above a real embedding's)."""
    MEAN = "mean"
    """Every vector at the vocabulary's mean embedding, plus a small random offset (a tenth
    of a token embedding's norm) that tells the positions apart. No token is favoured at
    the start, so what training adds is what the hard prompts read (a ``vocab`` start's
    random tokens stay each vector's nearest token, whatever training adds)."""


class PromptSpace(str, Enum):
    """What the trainable parameter is."""

    VECTORS = "vectors"
    """``[P, D]`` free vectors (anything the models accept)."""
    TOKENS = "tokens"
    """``[P, A]`` logits of a distribution over the ``A`` allowed tokens at each position;
    the models see its expected token embedding (a point in the tokens' convex hull), and
    each position reads as the token it puts most mass on."""


def _text_ids(init_text: Optional[str], tokenizer, n_tokens: int) -> list[int]:
    """``init_text``'s token ids, repeated or cut to ``n_tokens`` (the ``text`` start)."""
    if not init_text or tokenizer is None:
        raise FinediffError("soft prompt init 'text' needs a non-empty init_text")
    ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise FinediffError(f"init_text {init_text!r} has no tokens")
    return (ids * n_tokens)[:n_tokens]


def embedding_norm(embed: nn.Module, vocab_size: int, sample: int = 4096, seed: int = 0) -> float:
    """Mean L2 norm of the embedding module's output over a sample of token ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (min(sample, vocab_size),), generator=g)
    weight = next(embed.parameters())
    with torch.no_grad():
        return embed(ids.to(weight.device)).float().norm(dim=-1).mean().item()


def random_like(prompt_PD: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random prompt with the same per-token norms as ``prompt_PD`` (the baseline)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(prompt_PD.shape, generator=g).to(prompt_PD.device, torch.float32)
    norms = prompt_PD.detach().float().norm(dim=-1, keepdim=True)
    return (noise / noise.norm(dim=-1, keepdim=True) * norms).to(prompt_PD.dtype)


class SoftPrompt(nn.Module):
    """``n_tokens`` virtual tokens of the model's hidden size; one ``nn.Parameter``.

    Args:
        embed: the model's input embedding module (used for the init, not kept).
        vocab_size: number of rows of the vocabulary.
        n_tokens: number of virtual tokens ``P``.
        init: one of :class:`PromptInit`'s values.
        init_text: text for ``init="text"``.
        tokenizer: tokenizer for ``init="text"``.
        seed: seed for the random inits.
        space: one of :class:`PromptSpace`'s values.
        allowed: ``[V]`` bool, the tokens a ``tokens`` prompt may put mass on (needed there).

    Attributes:
        weight: the only trainable tensor in finediff, float32: ``[P, D]`` vectors, or in
            the ``tokens`` space ``[P, A]`` logits (``mean`` start: uniform, plus a little
            noise; ``vocab``/``text`` start: half the mass on the start token).
        start: ``[P, D]`` the prompt before training (a buffer, not saved in checkpoints:
            the init recreates it).
    """

    def __init__(
        self,
        embed: nn.Module,
        vocab_size: int,
        n_tokens: int = 8,
        init: str = "vocab",
        init_text: Optional[str] = None,
        tokenizer=None,
        seed: int = 0,
        space: str = "vectors",
        allowed: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        if n_tokens < 1:
            raise FinediffError(f"num_soft_prompt_tokens must be >= 1, got {n_tokens}")
        try:
            init = PromptInit(init)
        except ValueError:
            raise FinediffError(
                f"unknown soft prompt init {init!r}; choose one of {[i.value for i in PromptInit]}"
            ) from None
        try:
            space = PromptSpace(space)
        except ValueError:
            raise FinediffError(
                f"unknown soft prompt space {space!r}; choose one of {[s.value for s in PromptSpace]}"
            ) from None
        device = next(embed.parameters()).device
        g = torch.Generator().manual_seed(seed)
        self.space, self.table = space.value, None
        if space is PromptSpace.TOKENS:
            self._token_logits(embed, vocab_size, n_tokens, init, init_text, tokenizer, allowed, g)
            return
        with torch.no_grad():
            if init is PromptInit.TEXT:
                values = embed(torch.tensor(_text_ids(init_text, tokenizer, n_tokens), device=device))
            elif init is PromptInit.VOCAB:
                ids = torch.randint(0, vocab_size, (n_tokens,), generator=g)
                values = embed(ids.to(device))
            else:
                norm = embedding_norm(embed, vocab_size, seed=seed)
                hidden = next(embed.parameters()).shape[1]
                noise = torch.randn(n_tokens, hidden, generator=g)
                values = noise / noise.norm(dim=-1, keepdim=True) * norm
                if init is PromptInit.MEAN:
                    centre = scaled_table(embed)[:vocab_size].detach().float().mean(0).cpu()
                    values = centre + 0.1 * values
        self.init = init.value
        self.weight = nn.Parameter(values.detach().float().clone().cpu())
        # where training started: the hard prompts read what training added to it
        self.register_buffer("start", self.weight.detach().clone(), persistent=False)

    def _token_logits(self, embed, vocab_size, n_tokens, init, init_text, tokenizer, allowed, g) -> None:
        """The ``tokens`` space: logits over the allowed tokens at each position."""
        if allowed is None:
            raise FinediffError("a soft prompt in the tokens space needs the allowed tokens")
        if init not in (PromptInit.MEAN, PromptInit.VOCAB, PromptInit.TEXT):
            raise FinediffError(f"module.init={init.value} has no token distribution; "
                                "with module.space=tokens use mean, vocab or text")
        allowed = allowed[:vocab_size].cpu()
        # a plain attribute, not a buffer: data-parallel wrappers would broadcast it every step
        self.table = scaled_table(embed)[:vocab_size].detach()[allowed.to(embed.weight.device)].float()
        logits = 0.01 * torch.randn(n_tokens, self.table.shape[0], generator=g)  # mean: uniform, positions apart
        if init is not PromptInit.MEAN:
            if init is PromptInit.TEXT:
                ids = _text_ids(init_text, tokenizer, n_tokens)
            else:
                pool = allowed.nonzero().squeeze(1)
                ids = pool[torch.randint(0, len(pool), (n_tokens,), generator=g)].tolist()
            column = torch.full((vocab_size,), -1, dtype=torch.long)
            column[allowed] = torch.arange(int(allowed.sum()))
            for p, i in enumerate(ids):  # half the mass on the start token (if it is allowed)
                if column[i] >= 0:
                    logits[p, column[i]] = math.log(self.table.shape[0])
        self.weight = nn.Parameter(logits)
        with torch.no_grad():
            self.register_buffer("start", self.forward().detach().clone().cpu(), persistent=False)

    @property
    def n_tokens(self) -> int:
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1] if self.table is None else self.table.shape[1]

    def forward(self) -> torch.Tensor:
        """Return the ``[P, D]`` prompt: the vectors, or each position's expected token embedding."""
        if self.table is None:
            return self.weight
        if self.table.device != self.weight.device:
            self.table = self.table.to(self.weight.device)
        return torch.softmax(self.weight, dim=-1) @ self.table


def splice(
    prompt_PD: Optional[torch.Tensor],
    embeds_BTD: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    positions_B: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert the prompt into each row's text embeddings and extend the attention mask.

    The prompt goes in front of the text (``positions_B`` None or 0), or at
    ``positions_B[i]`` in row ``i`` (e.g. after a chat template's header, so the prompt
    starts the user's message). It is cast to the embeddings' dtype; the mask gets ``P``
    ones at the same place.

    Returns:
        ``(embeds [B, P+T, D], attention_mask [B, P+T])``; unchanged when ``prompt_PD`` is None.
    """
    if prompt_PD is None or prompt_PD.shape[0] == 0:
        return embeds_BTD, attention_mask_BT
    B, P = embeds_BTD.shape[0], prompt_PD.shape[0]
    prompt_PD = prompt_PD.to(embeds_BTD.dtype)
    ones_P = attention_mask_BT.new_ones(P)
    if positions_B is None or not bool(positions_B.any()):
        return (torch.cat([prompt_PD.unsqueeze(0).expand(B, -1, -1), embeds_BTD], dim=1),
                torch.cat([ones_P.expand(B, -1), attention_mask_BT], dim=1))
    rows, masks = [], []
    for i, k in enumerate(positions_B.tolist()):
        rows.append(torch.cat([embeds_BTD[i, :k], prompt_PD, embeds_BTD[i, k:]]))
        masks.append(torch.cat([attention_mask_BT[i, :k], ones_P, attention_mask_BT[i, k:]]))
    return torch.stack(rows), torch.stack(masks)


def text_mask(attention_mask_BT: torch.Tensor, n_prompt: int,
              positions_B: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B, P+T]`` bool: true at the real text positions after the prompt's place.

    Positions before the splice point (a chat template's header) cannot see the prompt,
    and the prompt's own positions and the padding are not text: all are false. The same
    positions are scored with and without a prompt (``n_prompt = 0``), so baselines compare
    like with like.
    """
    B, T = attention_mask_BT.shape
    pos = positions_B if positions_B is not None else attention_mask_BT.new_zeros(B)
    idx = torch.arange(T, device=attention_mask_BT.device).unsqueeze(0)
    body = attention_mask_BT.bool() & (idx >= pos.to(idx.device).unsqueeze(1))
    return spliced_mask(body, n_prompt, pos)


def spliced_mask(mask_BT: torch.Tensor, n_prompt: int, positions_B: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B, P+T]``: a per-token mask of the text with ``n_prompt`` false positions
    inserted where :func:`splice` puts the prompt (the prompt itself is never scored)."""
    mask_BT = mask_BT.bool()
    if n_prompt == 0:
        return mask_BT
    pos = positions_B.tolist() if positions_B is not None else [0] * mask_BT.shape[0]
    return torch.stack([torch.cat([mask_BT[i, :k], mask_BT.new_zeros(n_prompt), mask_BT[i, k:]])
                        for i, k in enumerate(pos)])


def is_trainable(parameter_name: str) -> bool:
    """The one predicate that decides which parameters train: the soft prompt's only."""
    return parameter_name == "soft_prompt.weight" or parameter_name.endswith(".soft_prompt.weight")


def apply_trainable(module: nn.Module) -> tuple[int, int]:
    """Set ``requires_grad`` by :func:`is_trainable`; return (trainable, frozen) counts."""
    trainable = frozen = 0
    seen = set()
    for name, p in module.named_parameters():
        p.requires_grad_(is_trainable(name))
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


PROMPT_RECORD_KEYS = ("prompt", "num_soft_prompt_tokens", "hidden_size", "init", "divergence", "temperature", "pair",
                      names.GLOBAL_STEP)


def load_prompt_record(path) -> dict:
    """A run's ``soft_prompt.pt``, checked: a missing, damaged or foreign file is a
    one-line error naming it."""
    record = load_torch(path, "a soft prompt record (soft_prompt.pt)")
    if not isinstance(record, dict) or set(PROMPT_RECORD_KEYS) - set(record):
        missing = sorted(set(PROMPT_RECORD_KEYS) - set(record)) if isinstance(record, dict) else ["a dict"]
        raise FinediffError(f"{path} is not a soft prompt record (missing {', '.join(missing)})")
    prompt = record["prompt"]
    if not (isinstance(prompt, torch.Tensor) and prompt.dim() == 2 and prompt.is_floating_point()
            and prompt.shape[1] == record["hidden_size"]):
        raise FinediffError(f"{path}: 'prompt' must be a [P, hidden_size] float tensor")
    start = record.get("start")
    if start is not None and not (isinstance(start, torch.Tensor) and start.shape == prompt.shape):
        raise FinediffError(f"{path}: 'start' must be a tensor shaped like 'prompt' {tuple(prompt.shape)}")
    return record
