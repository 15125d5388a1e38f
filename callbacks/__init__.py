from callbacks.evidence import EvidenceCallback
from callbacks.run_outputs import RunOutputs

__all__ = ["EvidenceCallback", "RunOutputs"]
