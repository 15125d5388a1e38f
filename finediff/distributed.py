"""Sharding the frozen pair across processes (FSDP2, ``torch.distributed.fsdp.fully_shard``).

Each decoder block of both models is sharded over the mesh: a process holds ``1/n`` of
every block and gathers one block at a time for its forward (and again for the backward
that carries the gradient to the prompt). The input embedding, final norm and head stay
whole on every process: finediff calls them outside the model's forward (to splice the
soft prompt, to read logits in chunks), and they are a small part of a large model.

The prompt is not sharded: it is tiny, and :func:`average_gradient` averages its gradient
over the processes after each backward, as data parallelism does.

Runs on CUDA (NCCL) and on CPU (gloo), which is how the tests drive it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from finediff.arch import decoder_layers
from finediff.errors import FinediffError


def shard_blocks(model: torch.nn.Module, mesh) -> int:
    """``fully_shard`` every decoder block of ``model`` over ``mesh``; returns how many."""
    from torch.distributed.fsdp import fully_shard

    blocks = decoder_layers(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    return len(blocks)


def shard_pair(pair, mesh) -> int:
    """Shard both models of a :class:`~finediff.models.ModelPair`; returns the blocks sharded."""
    if pair.shares_weights:
        raise FinediffError("sharding needs two separate models: set model.merge_adapter=true with trainer=fsdp")
    return shard_blocks(pair.base, mesh) + shard_blocks(pair.finetuned, mesh)


def average_gradient(param: torch.nn.Parameter) -> None:
    """Average ``param.grad`` over all processes (no-op outside a process group)."""
    if param.grad is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
    param.grad /= dist.get_world_size()
