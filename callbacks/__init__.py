from callbacks.run_outputs import RunOutputs

__all__ = ["RunOutputs"]
