"""ModelPairManager: the seed's model loader, a thin face over
:func:`finediff.models.load_model_pair`."""

from __future__ import annotations

from typing import Optional

import torch

from finediff.models import ModelPair, load_model_pair


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
