"""Memory planner: which way of placing the pair fits on how many GPUs of which size,
decided before any weights load.

    python plan.py model.base=meta-llama/Llama-3.3-70B-Instruct model.adapter=DIR model.dtype=bfloat16
    python plan.py experiment=sandbagging plan.gpus=[24,80]

(``plan.py``, the command line, composes ``train.py``'s config with Hydra and calls
:func:`plan` and :func:`format_plan` here.)

The model is built from its config alone on the ``meta`` device (``accelerate``'s
``init_empty_weights``); its size and largest block come from ``accelerate``'s own
estimator (``compute_module_sizes``, ``calculate_maximum_sizes``), and whether a
``device_map="auto"`` spread fits is asked of ``accelerate``'s ``infer_auto_device_map``
itself. The pair holds one copy of the weights when the finetuned side is base + an
unmerged adapter (``model.merge_adapter=false``) and two otherwise.

Strategies (each a number of GPUs of each size, or ``-`` when it does not fit in
``plan.max_gpus``):

- ``single``: both models on one GPU (``trainer=gpu``);
- ``split``: base on one GPU, finetuned on another (``model.placement=split``; two copies only);
- ``auto``: each model spread across the GPUs by ``device_map="auto"`` (``model.placement=auto``;
  generation and ADL, no data parallelism);
- ``fsdp`` / ``zero3``: every GPU holds ``1/n`` of each model plus the largest block
  gathered for its forward (``trainer=fsdp`` / ``trainer=deepspeed``).

Every GPU keeps ``plan.reserve_gib`` (CUDA context, allocator) and ``plan.overhead`` of its
weights (activations of a soft-prompt step at the default batch; the library's own
estimate for inference adds the same 20%) free.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from finediff.errors import FinediffError, exit_on_user_error
from finediff.io import markdown_table
from finediff.models import check_adapter, parse_dtype, resolve_source

GIB = 1024 ** 3
STRATEGIES = ("single", "split", "auto", "fsdp", "zero3")


@dataclass
class ModelSize:
    """What the planner needs to know of one model (bytes, at the planned dtype)."""

    name: str
    total: int
    largest_block: int
    adapter: int
    copies: int
    no_split: list[str]


def _empty_model(source: str, dtype, trust_remote_code: bool = False):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):  # sized at the planned dtype, not as stored
        del config.quantization_config
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # a tied head is counted once
    return model


def adapter_bytes(adapter: Optional[str], dtype_bytes: int) -> int:
    """Size of an adapter's weights at the model's dtype (from its safetensors header; 0 if none)."""
    if not adapter:
        return 0
    from safetensors import safe_open

    folder = Path(check_adapter(adapter))
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    n = 0
    for f in files:
        with safe_open(f, "pt") as st:
            for key in st.keys():
                n += math.prod(st.get_slice(key).get_shape())
    return n * dtype_bytes


def model_size(base: str, adapter: Optional[str] = None, dtype: str = "float32", merge_adapter: bool = True,
               finetuned: Optional[str] = None, trust_remote_code: bool = False) -> tuple[ModelSize, object]:
    """The pair's sizes, and the empty (meta) model for :func:`fits_auto`."""
    from accelerate.utils import calculate_maximum_sizes

    torch_dtype = parse_dtype(dtype)
    model = _empty_model(resolve_source(base), torch_dtype, trust_remote_code)
    total, (largest, _) = calculate_maximum_sizes(model)
    shared = bool(adapter) and not merge_adapter and finetuned in (None, base)
    return ModelSize(
        name=base, total=int(total), largest_block=int(largest),
        adapter=adapter_bytes(adapter, torch_dtype.itemsize) if adapter else 0,
        copies=1 if shared else 2, no_split=list(getattr(model, "_no_split_modules", None) or []),
    ), model


def usable(gpu_gib: float, weights: float, reserve_gib: float, overhead: float) -> bool:
    return weights * (1 + overhead) + reserve_gib * GIB <= gpu_gib * GIB


def fits_auto(model, n: int, budget_bytes: int, no_split: list[str]) -> bool:
    """Whether ``device_map="auto"`` puts ``model`` on ``n`` GPUs of ``budget_bytes`` each
    with nothing left for CPU or disk (accelerate's own placement)."""
    from accelerate.utils import infer_auto_device_map

    if budget_bytes <= 0:
        return False
    logging.getLogger("accelerate.utils.modeling").setLevel(logging.ERROR)  # "device 0 is not available": planned, not present
    device_map = infer_auto_device_map(model, max_memory={**{i: budget_bytes for i in range(n)}, "cpu": 0},
                                       no_split_module_classes=no_split)
    return all(isinstance(d, int) for d in device_map.values())


def gpus_needed(size: ModelSize, model, gpu_gib: float, max_gpus: int = 8, reserve_gib: float = 1.0,
                overhead: float = 0.2) -> dict[str, Optional[int]]:
    """For each strategy, the fewest GPUs of ``gpu_gib`` that hold the pair (None: more than ``max_gpus``)."""
    one = size.total + size.adapter
    need: dict[str, Optional[int]] = {}
    need["single"] = 1 if usable(gpu_gib, size.copies * size.total + size.adapter, reserve_gib, overhead) else None
    need["split"] = 2 if size.copies == 2 and max_gpus >= 2 and usable(gpu_gib, one, reserve_gib, overhead) else None
    budget = int((gpu_gib * GIB - reserve_gib * GIB) / (1 + overhead) / size.copies)
    need["auto"] = next((n for n in range(1, max_gpus + 1) if fits_auto(model, n, budget, size.no_split)), None)
    shard = next((n for n in range(1, max_gpus + 1)
                  if usable(gpu_gib, size.copies * (size.total / n + size.largest_block) + size.adapter,
                            reserve_gib, overhead)), None)
    need["fsdp"] = need["zero3"] = shard
    return need


def plan(base: str, adapter: Optional[str] = None, dtype: str = "bfloat16", merge_adapter: bool = False,
         finetuned: Optional[str] = None, gpus: tuple[float, ...] = (24, 40, 80), max_gpus: int = 8,
         reserve_gib: float = 1.0, overhead: float = 0.2, trust_remote_code: bool = False) -> dict:
    """The plan as a dict: the pair's sizes and, per GPU size, the GPUs each strategy needs."""
    if max_gpus < 1:
        raise FinediffError(f"plan.max_gpus must be >= 1, got {max_gpus}")
    if not gpus or any(not isinstance(g, (int, float)) or g <= 0 for g in gpus):
        raise FinediffError(f"plan.gpus must be a list of positive GPU sizes in GiB, got {list(gpus)}")
    size, model = model_size(base, adapter, dtype, merge_adapter, finetuned, trust_remote_code)
    rows = {str(g): gpus_needed(size, model, float(g), max_gpus, reserve_gib, overhead) for g in gpus}
    return {"model": asdict(size), "dtype": dtype, "max_gpus": max_gpus, "reserve_gib": reserve_gib,
            "overhead": overhead, "gpus_needed": rows}


def format_plan(result: dict) -> str:
    m = result["model"]
    lines = [f"{m['name']} ({result['dtype']}): {m['total'] / GIB:.2f} GiB of weights, largest block "
             f"{m['largest_block'] / GIB:.2f} GiB, adapter {m['adapter'] / 2 ** 20:.1f} MiB; "
             f"the pair holds {m['copies']} cop{'y' if m['copies'] == 1 else 'ies'} of the weights",
             ""]
    lines += markdown_table(["GPU size", *STRATEGIES],
                            [[f"{gpu} GiB"] + [f"{need[s]} GPU{'s' if need[s] != 1 else ''}" if need[s] else "-"
                                               for s in STRATEGIES]
                             for gpu, need in result["gpus_needed"].items()])
    lines.append(f"\n'-': does not fit on {result['max_gpus']} GPUs (plan.max_gpus). Each GPU keeps "
                 f"{result['reserve_gib']} GiB + {result['overhead']:.0%} of its weights free.")
    return "\n".join(lines)


if __name__ == "__main__":  # the command line composes the project's config: a shell, not the core
    exit_on_user_error(FinediffError("the planner's command line is python plan.py model.base=NAME ... "
                                     "(overrides of train.py's config)"))
