from callbacks.evidence import LoggerSink
from callbacks.run_outputs import RunOutputs

__all__ = ["LoggerSink", "RunOutputs"]
