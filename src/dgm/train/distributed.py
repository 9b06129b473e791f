"""Data-parallel training on several processes with torch.distributed (launched by torchrun).

Each process (rank) holds a full copy of the model inside DistributedDataParallel, which
averages the gradients across ranks after every backward pass. Every rank draws the same global
permutation of the training set (the data generator has the same seed everywhere) and takes its
own strided share of each global batch, so a run on N processes with per-rank batch B / N sees
the same batches as one process with batch B. The noise (binarization, z ~ q) is drawn from
per-rank generators. Metrics are summed across ranks; only rank 0 writes files. Per-datapoint
tables (VB-EM) are sharded by example id instead: rank r holds and trains the rows of the
examples n % world == r, and its batches hold only those (see dgm.variational.local).

    torchrun --nproc-per-node 2 -m dgm train configs/mnist_vae.toml --out runs/ddp

The CPU uses the gloo backend, CUDA the NCCL backend (one GPU per rank, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world`` (1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks (a copy; ``t`` itself is left alone)."""
        if not self.enabled:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (so that all ranks decide alike)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` replaced in place by its maximum over the ranks, on its device (no host
        read: with NCCL the reduction is queued like any kernel)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 only (None elsewhere): for what only
        rank 0 writes, without a copy of everything on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


_joined = False  # this process joined a group in from_environment


def from_environment(device_type: str = "cpu") -> Distributed:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...), once; without WORLD_SIZE > 1 this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        global _joined
        _joined = True  # end_process skips the interpreter's finalization
    return Distributed(rank=rank, world=world, local_rank=local_rank)


def shutdown(*, wait: bool = False) -> None:
    """Leave the process group; with ``wait``, after every rank has come here (so that no rank
    ends while rank 0 still writes the run's files)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def end_process(code: int) -> None:
    """End a process that joined a group now, skipping the interpreter's finalization.

    DistributedDataParallel keeps the gloo process group alive past ``destroy_process_group``
    (torch 2.13: the group's C++ object stays referenced after the DDP module is freed), so its
    worker threads outlive Python. A worker that releases a finished collective (here the
    barrier after the last checkpoint, which holds the all-gather of the random-number states)
    while the interpreter finalizes needs the GIL, cannot have it and aborts the process
    (SIGABRT, "terminate called without an active exception"): about 1 run in 20 on this
    machine, seen in gdb. Everything dgm writes is flushed and fsynced before this point.
    """
    if not _joined:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
