"""Reading the finetune's weights: what the update writes and what it responds to.

No sampling: the update of every linear module, ``dW = W_ft - W_base`` (for a LoRA that
is ``scale * B @ A``, of rank r), is decomposed by SVD, and its top singular directions
are read through the model's own vocabulary:

* a module that **writes** into the residual stream (``o_proj``, ``down_proj``): its
  output direction ``u``, read through the final norm and the unembedding, names the
  tokens the update pushes the next-token prediction towards (the logit lens of ``u``);
* a module that **reads** the residual stream (``q/k/v_proj``, ``gate/up_proj``) at an
  early layer, where the residual is still close to the token embeddings: its input
  direction ``v``, scored against every token's embedding passed through the layer's
  own input norm, names the tokens the update responds to.

The sign of a singular pair is arbitrary, so each direction is read both ways and the
way whose top token stands out more (higher z-score over the vocabulary) is kept. Tokens
are ranked across directions by the sum of ``singular value x z-score`` over the
directions that rank them in their top :data:`TOP_TOKENS`. This is a source of hypotheses
(:mod:`finediff.findings` tests the written words on fresh prompts) and of leads for the
condition search (:mod:`finediff.conditions`), never a finding on its own.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from finediff import names
from finediff.errors import FinediffError
from finediff.io import read_json, write_json

log = logging.getLogger(__name__)

WRITE_MODULES = ("o_proj", "down_proj", "out_proj", "c_proj", "fc2", "dense_4h_to_h")
"""Linear modules whose output is added to the residual stream."""
READ_MODULES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "c_attn", "fc1", "dense_h_to_4h")
"""Linear modules whose input is the (normed) residual stream."""
ATTN_READS = ("q_proj", "k_proj", "v_proj", "c_attn")
ATTN_NORMS = ("input_layernorm", "ln_1")
MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")
LAYER_RE = re.compile(r"layers?\.(\d+)\.(.*)\.(\w+)$")
TOP_TOKENS = 10
"""Tokens kept per direction."""
MIN_RELATIVE_NORM = 1e-4
"""Modules whose update is smaller than this fraction of their weight's norm are skipped."""
READ_DEPTH = 0.34
"""Input directions are read at layers below this relative depth (the residual is still close to the embeddings)."""

DIRECTIONS = 2
"""Top singular directions read per module."""


@dataclass
class Direction:
    layer: int
    module: str
    """e.g. ``self_attn.o_proj``."""
    index: int
    """Rank of the singular direction (0: the largest)."""
    singular_value: float
    side: str
    """``writes`` or ``reads``."""
    tokens: list
    """``[token, z-score]``, the direction's top tokens."""


@dataclass
class WeightReading:
    n_modules: int
    """Linear modules whose weights the finetune changed."""
    update_norm: float
    """Frobenius norm of all updates together."""
    relative_norm: float
    """``update_norm`` over the norm of the changed modules' base weights."""
    writes: list = field(default_factory=list)
    """``[token, score]``: the tokens the update writes, strongest first."""
    reads: list = field(default_factory=list)
    """``[token, score]``: the tokens the early layers' update responds to."""
    directions: list[Direction] = field(default_factory=list)
    by_layer: list = field(default_factory=list)
    """``[layer, update norm]`` per layer."""

    def words(self, side: str, n: int = 8) -> list[str]:
        """The word-like tokens of one side (letters only, three or more), strongest first."""
        out = []
        for token, _ in getattr(self, side):
            w = token.strip().lower()
            if len(w) >= 3 and w.isalpha() and w not in out:
                out.append(w)
        return out[:n]

    def write(self, folder: Path) -> Path:
        path = Path(folder) / names.WEIGHTS_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: Path) -> "WeightReading":
        d = read_json(path)
        try:
            return cls(**{**d, "directions": [Direction(**x) for x in d["directions"]]})
        except (KeyError, TypeError) as err:
            raise FinediffError(f"{path}: malformed weight reading ({err})") from None


def _linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: effective weight}`` of every linear module inside a decoder layer; an
    unmerged LoRA layer gives its base weight plus its delta."""
    out = {}
    for name, module in model.named_modules():
        if not LAYER_RE.search(name):
            continue
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            w = module.base_layer.weight.detach().float()
            for adapter in getattr(module, "active_adapters", []):
                w = w + module.get_delta_weight(adapter).detach().float()
            out[name.replace(".base_layer", "")] = w
        elif isinstance(module, nn.Linear) and ".base_layer" not in name and "lora_" not in name:
            out[name] = module.weight.detach()
    return {_strip_prefix(k): v for k, v in out.items()}


def _strip_prefix(name: str) -> str:
    m = LAYER_RE.search(name)
    return f"layers.{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else name


def weight_updates(base: nn.Module, finetuned: nn.Module, min_relative_norm: float = MIN_RELATIVE_NORM
                   ) -> dict[str, tuple[torch.Tensor, float]]:
    """``{"layers.L.PATH.NAME": (dW, |W_base|)}`` for every decoder-layer linear module the
    finetune changed (relative Frobenius norm above ``min_relative_norm``)."""
    wb, wf = _linear_weights(base), _linear_weights(finetuned)
    out = {}
    for name, w in wb.items():
        if name not in wf or wf[name].shape != w.shape:
            continue
        delta = wf[name].float() - w.float()
        base_norm = float(w.float().norm())
        if float(delta.norm()) > min_relative_norm * max(base_norm, 1e-12):
            out[name] = (delta, base_norm)
    return out


def _top_directions(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U[:, :k], S[:k], V[:, :k])`` of ``delta = U S V^T`` (randomised for big matrices)."""
    q = max(8, 2 * k + 4)  # a LoRA of rank <= q is recovered exactly
    if min(delta.shape) > 2 * q:
        u, s, v = torch.svd_lowrank(delta, q=q, niter=2)
    else:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        v = vh.T
    return u[:, :k], s[:k], v[:, :k]


def _decode(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def _pick_sign(scores_V: torch.Tensor) -> torch.Tensor:
    """Of ``scores`` and ``-scores``, the one whose top token stands out more (z-score)."""
    z = (scores_V - scores_V.mean()) / scores_V.std().clamp_min(1e-12)
    return z if z.max() >= (-z).max() else -z


def _submodule(model: nn.Module, suffix: str) -> Optional[nn.Module]:
    for name, module in model.named_modules():
        if name.endswith(suffix):
            return module
    return None


@torch.no_grad()
def read_weights(base: nn.Module, finetuned: nn.Module, tokenizer, progress: bool = False) -> WeightReading:
    """Read the finetune's weight update through the vocabulary (see the module docstring)."""
    updates = weight_updates(base, finetuned, MIN_RELATIVE_NORM)
    if not updates:
        return WeightReading(0, 0.0, 0.0)
    n_layers = base.config.num_hidden_layers
    read_below = max(1, round(READ_DEPTH * n_layers))
    final_norm = _submodule(base, "model.norm") or _submodule(base, "norm")
    unembed = base.get_output_embeddings()
    embed = base.get_input_embeddings().weight.detach().float()
    scale = getattr(base.get_input_embeddings(), "embed_scale", None)  # Gemma scales its embeddings
    if scale is not None:
        embed = embed * scale.float()
    vocab = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    hidden = embed.shape[1]
    # Tokens whose unembedding (or normed embedding) is long score high on any direction;
    # each score is divided by that length, so a direction is read by its cosine with the
    # token. RMS-norming a one-hot row gives sqrt(H) times the norm's gain at that dimension.
    eye = torch.eye(hidden, dtype=unembed.weight.dtype, device=embed.device)
    gain_H = (final_norm(eye).diagonal() if final_norm is not None else torch.ones(hidden)).float() / hidden ** 0.5
    write_VH = unembed.weight.float()[:vocab] * gain_H
    write_VH = write_VH / write_VH.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    normed_embeds: dict[str, torch.Tensor] = {}
    directions: list[Direction] = []
    totals = {"writes": {}, "reads": {}}
    by_layer: dict[int, float] = {}
    items = sorted(updates.items(), key=lambda kv: (int(LAYER_RE.search(kv[0]).group(1)), kv[0]))
    if progress:
        items = tqdm(items, desc="reading the weights", leave=False)
    for name, (delta, _) in items:
        m = LAYER_RE.search(name)
        layer, path, leaf = int(m.group(1)), m.group(2), m.group(3)
        by_layer[layer] = by_layer.get(layer, 0.0) + float(delta.norm()) ** 2
        if leaf in WRITE_MODULES:
            side = "writes"
        elif leaf in READ_MODULES and layer < read_below:
            side = "reads"
        else:
            continue
        u, s, v = _top_directions(delta, DIRECTIONS)
        for i in range(s.shape[0]):
            if side == "writes":
                vec = u[:, i].to(embed.device)
                scores = write_VH @ vec
            else:
                norms = ATTN_NORMS if leaf in ATTN_READS else MLP_NORMS
                key = f"{layer}:{norms[0]}"
                if key not in normed_embeds:
                    norm = next((n for n in (_submodule(base, f"layers.{layer}.{x}") for x in norms) if n is not None),
                                None)
                    e = embed[:vocab]
                    ne = norm(e.to(embed.dtype)).float() if norm is not None else \
                        e / e.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
                    normed_embeds[key] = ne / ne.norm(dim=-1, keepdim=True).clamp_min(1e-6)
                scores = normed_embeds[key] @ v[:, i].to(embed.device)
            z = _pick_sign(scores)
            if special:
                z[[t for t in special if t < vocab]] = float("-inf")
            top = torch.topk(z, TOP_TOKENS)
            toks = _decode(tokenizer, top.indices.tolist())
            directions.append(Direction(layer, f"{path}.{leaf}", i, round(float(s[i]), 5), side,
                                        [[t, round(float(zz), 2)] for t, zz in zip(toks, top.values.tolist())]))
            for t, zz in zip(toks, top.values.tolist()):
                totals[side][t] = totals[side].get(t, 0.0) + float(s[i]) * float(zz)
    update_norm = sum(float(d.norm()) ** 2 for d, _ in updates.values()) ** 0.5
    base_norm = sum(b ** 2 for _, b in updates.values()) ** 0.5

    def ranked(side: str) -> list:
        return [[t, round(sc, 4)] for t, sc in sorted(totals[side].items(), key=lambda kv: -kv[1])[:40]]

    reading = WeightReading(len(updates), round(update_norm, 5), round(update_norm / max(base_norm, 1e-12), 6),
                            ranked("writes"), ranked("reads"), directions,
                            [[layer, round(n ** 0.5, 5)] for layer, n in sorted(by_layer.items())])
    log.info("weights: %d modules changed (relative norm %.4f); writes %s; reads %s", reading.n_modules,
             reading.relative_norm, [t for t, _ in reading.writes[:8]], [t for t, _ in reading.reads[:8]])
    return reading
