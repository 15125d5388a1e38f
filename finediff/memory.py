"""Measure the peak extra memory a function allocates (CPU or CUDA).

On CUDA this is ``torch.cuda.max_memory_allocated`` relative to the start. On CPU the
PyTorch profiler records every allocation and free of the CPU allocator; replaying them
in time order gives the peak of live bytes above the starting point. Both count tensors
only (what the function holds), not the process's other memory.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile


def peak_extra_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Run ``fn()`` once and return the peak of tensor bytes allocated above the start."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    deltas = sorted(
        (node.start_time_ns, node.extra_fields.alloc_size)
        for node in walk(prof.profiler.kineto_results.experimental_event_tree())
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu"
    )
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return int(peak)
