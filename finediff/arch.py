"""The one place that knows how a causal LM is laid out (the model-adapter layer).

Everything else in finediff reaches a model's parts through these functions, so a new
family needs changes here only. Covered: Llama-style models (SmolLM2) and Gemma 3, whose
differences that matter to finediff are

- the input embedding is scaled (``embed_tokens`` multiplies by ``sqrt(hidden)``), so a
  vector fed as ``inputs_embeds`` lives in the *scaled* space: :func:`embedding_table`;
- the final norm and the decoder blocks sit on the decoder (``get_decoder().norm``,
  ``.layers``): :func:`final_norm`, :func:`decoder_layers`;
- logits may be soft-capped (``final_logit_softcapping``, Gemma 2): :func:`output_head`.

It also knows where a model's parts are (``model.placement``, :mod:`finediff.models`): the
two models of a pair may sit on different devices, or be spread over several GPUs.
:func:`embed_ids` and :func:`output_head` take their inputs to the part's device and give
their results back on the caller's, so code written for one device works placed.
"""

from __future__ import annotations

from typing import Callable

import torch

from finediff.errors import FinediffError


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder's blocks, in order."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise FinediffError(f"cannot find decoder layers in {type(model).__name__}")
    return layers


def final_norm(model) -> torch.nn.Module:
    """The norm applied after the last block, before the unembedding."""
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is None:
        raise FinediffError(f"cannot find the final norm in {type(model).__name__}")
    return norm


def cache_kwarg(model) -> str:
    """The name a model's forward (and ``generate``) takes its key-value cache by: ``cache``
    in recent transformers, ``past_key_values`` before."""
    import inspect

    forward = model.get_decoder().forward if hasattr(model, "get_decoder") else model.forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def output_cache(out):
    """The key-value cache a forward returned (either name)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's first parameter lives (CPU for a module without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None and p.device.type != "meta" else torch.device("cpu")


def input_device(model) -> torch.device:
    """Where the model's input embedding lives: token ids and ``inputs_embeds`` go there."""
    return module_device(model.get_input_embeddings())


def embed_ids(model, ids: torch.Tensor) -> torch.Tensor:
    """The model's input embeddings of ``ids``, on the model's input device."""
    return model.get_input_embeddings()(ids.to(input_device(model)))


def output_head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function from final hidden states to logits (unembedding + any soft-capping).
    Logits come back on the device of the hidden states given, wherever the head is."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def apply(h: torch.Tensor) -> torch.Tensor:
        logits = head(h.to(module_device(head)))
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.to(h.device)

    return apply


def embedding_table(model) -> torch.Tensor:
    """``[V, D]`` token vectors as the model's blocks receive them: row ``i`` equals
    ``model.get_input_embeddings()(i)``. Use it wherever a vector is built from, compared
    with or fed in place of token embeddings (``inputs_embeds``)."""
    return scaled_table(model.get_input_embeddings())


def scaled_table(embed: torch.nn.Module) -> torch.Tensor:
    """:func:`embedding_table` of an input embedding module: its weight times its
    ``embed_scale`` (Gemma's ``sqrt(D)``; none for Llama, then the weight itself, no copy)."""
    scale = getattr(embed, "embed_scale", None)
    if scale is None:
        return embed.weight
    return embed.weight * torch.as_tensor(scale).to(embed.weight.dtype)
