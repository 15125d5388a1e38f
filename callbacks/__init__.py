from callbacks.evidence import DivergentDatasetCallback, HardPromptCallback
from callbacks.run_outputs import RunOutputs

__all__ = ["DivergentDatasetCallback", "HardPromptCallback", "RunOutputs"]
