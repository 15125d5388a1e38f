"""finediff: what did this finetune change?

The core package is plain PyTorch + transformers: no Lightning, no Hydra. Every
algorithm lives here as functions and small classes a notebook user can call.
"""

from finediff.errors import FinediffError

__version__ = "0.1.0"
__all__ = ["FinediffError", "__version__"]
