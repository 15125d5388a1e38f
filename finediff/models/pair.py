"""The frozen base/finetuned pair: :class:`ModelPair`, what it was loaded from
(:class:`PairSpec`) and :func:`load_model_pair`.

The finetuned side may add a PEFT adapter (a local directory or hub id) on top of its
model, in one of two ways (``merge_adapter``):

* merged (``True``): the adapter is merged into a second copy of the weights; both sides
  are plain causal LMs and the forward pass costs no adapter overhead, at twice the
  weight memory;
* shared (``False``, the pair's default, when the finetuned side is the base plus the adapter): the finetuned
  side is a second module tree over the *same* parameter tensors as the base
  (:func:`share_weights`), with the adapter's layers put on it unmerged. Weight memory is
  one model plus the adapter; every hook, submodule and ``generate`` call works on each
  side as on two separate models, since the two trees share tensors, not modules.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass
from typing import Optional

from torch import nn

from finediff.errors import FinediffError
from finediff.models.placement import PLACEMENTS, _check_devices, auto_device_map, default_devices, dispatch
from finediff.models.sources import DEFAULT_MODEL, attach_adapter, check_adapter, freeze, load_model, load_tokenizer

log = logging.getLogger(__name__)


def share_weights(model: nn.Module) -> nn.Module:
    """A second module tree over the same parameters and buffers as ``model`` (nothing
    is copied but the modules themselves)."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


@dataclass(frozen=True)
class PairSpec:
    """What a pair was loaded from; saved with every soft prompt so it can be reused."""

    base: str
    """Model name of the base side (see :mod:`finediff.models.sources` for the accepted forms)."""
    finetuned: str
    """Model name of the finetuned side (often equal to ``base``)."""
    adapter: Optional[str] = None
    """PEFT adapter applied on top of the finetuned side, or None."""
    dtype: str = "float32"
    """Weights dtype of both models."""

    def as_dict(self) -> dict:
        return {"base": self.base, "finetuned": self.finetuned,
                "adapter": self.adapter, "dtype": self.dtype}


class ModelPair(nn.Module):
    """A frozen base model and a frozen finetuned model that share one tokenizer.

    Both are registered submodules (so devices and precision follow the owner), but no
    parameter requires a gradient and both stay in eval mode whatever the owner does.
    Gradients can still flow *through* them to inputs such as a soft prompt.
    """

    def __init__(self, base: nn.Module, finetuned: nn.Module, tokenizer, spec: PairSpec):
        super().__init__()
        check_compatible(base, finetuned, spec)
        self.base = freeze(base)
        self.finetuned = freeze(finetuned)
        self.tokenizer = tokenizer
        self.spec = spec
        self._checkpointing = False
        self.placement: Optional[str] = None
        """``split`` or ``auto`` once :func:`load_model_pair` placed the models (see there);
        a placed pair stays where it is when its owner is moved (``.to()``, Lightning)."""

    def _apply(self, fn, recurse: bool = True):
        if self.placement:  # placed models keep their devices and dtype
            return self
        return super()._apply(fn, recurse)

    @property
    def shares_weights(self) -> bool:
        """Both sides read one copy of the weights (an unmerged adapter on the base)."""
        return self.base.get_input_embeddings().weight is self.finetuned.get_input_embeddings().weight

    @property
    def hidden_size(self) -> int:
        return self.base.get_input_embeddings().weight.shape[1]

    @property
    def num_layers(self) -> int:
        return self.base.config.num_hidden_layers

    def train(self, mode: bool = True) -> "ModelPair":
        # The frozen models never leave eval mode (dropout off, deterministic).
        super().train(False)
        if self._checkpointing:
            self._flag_checkpoint_layers()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute decoder layers in backward (``use_reentrant=False``) to save memory.

        transformers only checkpoints layers whose ``training`` flag is set, so the flag is
        set on the decoder layers themselves and nowhere below them: dropout modules stay
        in eval mode.
        """
        for model in (self.base, self.finetuned):
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self._checkpointing = True
        self._flag_checkpoint_layers()

    def _flag_checkpoint_layers(self) -> None:
        for model in (self.base, self.finetuned):
            for module in model.modules():
                if getattr(module, "gradient_checkpointing", False):
                    module.training = True


def check_compatible(base: nn.Module, finetuned: nn.Module, spec: PairSpec) -> None:
    """A pair must share vocabulary and hidden size; anything else names both models."""
    eb, ef = base.get_input_embeddings().weight, finetuned.get_input_embeddings().weight
    if eb.shape[0] != ef.shape[0]:
        raise FinediffError(
            f"vocabulary mismatch: base {spec.base!r} has {eb.shape[0]} tokens, "
            f"finetuned {spec.finetuned!r} has {ef.shape[0]}"
        )
    if eb.shape[1] != ef.shape[1]:
        raise FinediffError(
            f"hidden size mismatch: base {spec.base!r} has {eb.shape[1]}, "
            f"finetuned {spec.finetuned!r} has {ef.shape[1]}"
        )


def load_model_pair(
    base: str = DEFAULT_MODEL,
    finetuned: Optional[str] = None,
    adapter: Optional[str] = None,
    dtype: str = "float32",
    merge_adapter: bool = False,
    trust_remote_code: bool = False,
    require_finetuned: bool = False,
    placement: Optional[str] = None,
    devices: Optional[list] = None,
) -> ModelPair:
    """Load base and finetuned models (finetuned defaults to base; add ``adapter`` on top).

    Args:
        base: model name of the base side.
        finetuned: model name of the finetuned side; None means the same as ``base``.
        adapter: PEFT adapter directory or hub id applied to the finetuned side.
        dtype: weights dtype of both models.
        merge_adapter: merge the adapter into a second copy of the weights (twice the
            weight memory); False (default) with an adapter on the base: one copy of the
            weights, shared by both sides, the adapter unmerged on the finetuned side
            (0.53x the pair's memory at the same step time on the embedded pair).
        trust_remote_code: allow model repositories to run their own code (off by default).
        require_finetuned: refuse a pair with neither ``finetuned`` nor ``adapter`` (the
            command-line runs set it: diffing the base against itself by omission would
            report zeros as a result); name the base as ``finetuned`` to do it on purpose.
        placement: None (default): both models go where the pair is moved (the trainer's
            device). ``split``: the base on ``devices[0]``, the finetuned model on
            ``devices[1]`` (two copies of the weights: needs ``merge_adapter`` or a
            separate finetuned model). ``auto``: each model spread over ``devices`` by one
            shared accelerate device map (each device's memory divided by the copies held),
            for models that fit no single device. Activations and logits come back on the
            caller's device (:mod:`finediff.arch`), so every method runs placed.
        devices: devices for ``placement`` (default: every visible GPU, else the CPU).

    Returns:
        A frozen :class:`ModelPair`.
    """
    if require_finetuned and not finetuned and not adapter:
        raise FinediffError("nothing to diff: set model.adapter=DIR (a PEFT adapter on the base) or "
                            "model.finetuned=NAME (name the base there to diff it against itself)")
    if placement is not None and placement not in PLACEMENTS:
        raise FinediffError(f"model.placement={placement!r}: choose null, {' or '.join(PLACEMENTS)}")
    shared = bool(adapter) and (finetuned or base) == base and not merge_adapter
    if placement == "split" and shared:
        raise FinediffError("model.placement=split puts each model on its own device, but the adapter shares the "
                            "base's weights: set model.merge_adapter=true (two copies of the weights)")
    placed_on = _check_devices(devices or default_devices(), 2 if placement == "split" else 1,
                               placement) if placement else None
    if adapter:
        check_adapter(adapter)  # before any weights load
    finetuned = finetuned or base
    spec = PairSpec(base=base, finetuned=finetuned, adapter=adapter, dtype=str(dtype))
    tokenizer = load_tokenizer(base, trust_remote_code)
    if finetuned != base:
        ft_tokenizer = load_tokenizer(finetuned, trust_remote_code)
        if ft_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise FinediffError(
                f"tokenizer mismatch: base {base!r} and finetuned {finetuned!r} do not share "
                "one vocabulary; finediff compares models with the same tokenizer"
            )
    base_model = load_model(base, dtype, trust_remote_code=trust_remote_code)
    device_map = None
    if placement == "auto":
        device_map = auto_device_map(base_model, placed_on, copies=1 if shared else 2)
        base_model = dispatch(base_model, device_map)
    elif placement == "split":
        base_model = base_model.to(placed_on[0])
    if shared:  # one copy of the weights, placed or not: the adapter goes on a second module tree
        ft_model = freeze(attach_adapter(share_weights(base_model), adapter, merge=False).get_base_model())
    else:
        ft_model = load_model(finetuned, dtype, adapter=adapter, merge_adapter=merge_adapter,
                              trust_remote_code=trust_remote_code)
        if placement == "auto":
            ft_model = dispatch(ft_model, device_map)
        elif placement == "split":
            ft_model = ft_model.to(placed_on[1])
    pair = ModelPair(base_model, ft_model, tokenizer, spec)
    pair.placement = placement
    if placement:
        log.info("model.placement=%s: base on %s, finetuned on %s", placement,
                 sorted({str(p.device) for p in base_model.parameters()}),
                 sorted({str(p.device) for p in ft_model.parameters()}))
    return pair
