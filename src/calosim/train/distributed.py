"""Data parallelism: ``torchrun --nproc_per_node K calosim train ...`` (or any launcher that sets
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``).

Every rank builds the same model (rank 0's initial weights are broadcast to be safe), reads its
own shard of each epoch's seeded permutation, and :func:`all_reduce_grads` averages gradients
in ``TrainContext.backward_step`` before each optimiser step, so all ranks keep identical
weights. Only rank 0 writes files. Backend: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistEnv", "init_distributed", "shutdown_distributed", "broadcast_module", "all_reduce_grads",
           "shard", "barrier", "all_gather_objects"]


@dataclass
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size``; ``device`` to train on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(device: str | torch.device, local_rank: int, distributed: bool) -> torch.device:
    d = str(device)
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(d)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        if distributed and dev.index is None:
            dev = torch.device("cuda", local_rank)  # one GPU per rank
    return dev


def init_distributed(device: str | torch.device = "cpu") -> DistEnv:
    """Initialise ``torch.distributed`` when launched with ``WORLD_SIZE > 1``; else a 1-rank env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=_resolve_device(device, 0, False))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = _resolve_device(device, local_rank, True)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev, owns_group=owns)


def shutdown_distributed(env: DistEnv) -> None:
    if env.enabled and env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


@torch.no_grad()
def broadcast_module(module: nn.Module, env: DistEnv, src: int = 0, *, parameters: bool = True) -> None:
    """Copy ``src``'s parameters (unless ``parameters=False``) and buffers to every rank."""
    if not env.enabled:
        return
    for t in [*(module.parameters() if parameters else ()), *module.buffers()]:
        dist.broadcast(t.data, src)


@torch.no_grad()
def all_reduce_grads(params: list[nn.Parameter], env: DistEnv) -> None:
    """Average the gradients of ``params`` over ranks in one flat all-reduce.

    Parameters without a gradient take part as zeros (every rank must send the same sizes) and
    keep ``grad=None`` afterwards, so optimisers still skip them.
    """
    if not env.enabled or not params:
        return
    flats = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device, dtype=p.dtype)
             for p in params]
    buf = torch.cat(flats)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    buf /= env.world_size
    at = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            p.grad.copy_(buf[at:at + n].view_as(p.grad))
        at += n


def shard(perm: Tensor, env: DistEnv) -> Tensor:
    """This rank's part of a permutation (DistributedSampler-style: pad by wrapping, then stride)."""
    if not env.enabled:
        return perm
    n = len(perm)
    total = -(-n // env.world_size) * env.world_size
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    return perm[env.rank::env.world_size]


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without DDP). In-memory only."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
