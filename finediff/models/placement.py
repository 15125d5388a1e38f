"""Where the models of a pair go (``model.placement``): each on its own device
(``split``) or each spread over several by one shared accelerate device map (``auto``)."""

from __future__ import annotations

import psutil
import torch
from torch import nn

from finediff.errors import FinediffError

PLACEMENTS = ("split", "auto")
"""``model.placement`` values (None: both models go wherever the trainer moves the pair)."""


def _check_devices(devices: list, n: int, placement: str) -> list[torch.device]:
    try:
        out = [torch.device(d) for d in devices]
    except (RuntimeError, TypeError) as err:
        raise FinediffError(f"model.devices: {err}") from None
    if len(out) < n:
        raise FinediffError(f"model.placement={placement} needs {n} devices in model.devices, got {list(devices)}")
    for d in out:
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise FinediffError(f"model.devices: {d} is not available here "
                                f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA devices)")
    return out


def default_devices() -> list[str]:
    """Every visible GPU, or the CPU when there is none."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def auto_device_map(model: nn.Module, devices: list[torch.device], copies: int = 2) -> dict:
    """One layer-to-device map for both models of a pair (accelerate's
    ``infer_auto_device_map``), with each device's memory divided by the number of weight
    copies. Both models get the same map, so layer ``l`` of the base and of the finetuned
    model sit on the same device and activations compare without moving."""
    from accelerate import infer_auto_device_map

    memory = {}
    for d in devices:
        if d.type == "cuda":
            key = d.index or 0
            free = torch.cuda.mem_get_info(key)[0]
        else:
            key = d.type
            free = psutil.virtual_memory().available
        memory[key] = int(free * 0.9 / copies)
    no_split = getattr(model, "_no_split_modules", None) or []
    device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=list(no_split))
    if set(device_map.values()) - set(memory):
        raise FinediffError(f"model.placement=auto: {copies} copies of the model do not fit on "
                            f"{', '.join(map(str, devices))} (see python plan.py)")
    return device_map


def dispatch(model: nn.Module, device_map: dict) -> nn.Module:
    """``model`` spread over devices by ``device_map`` (accelerate hooks move the
    activations from one block to the next)."""
    from accelerate import dispatch_model

    return dispatch_model(model, device_map=device_map, force_hooks=True)
