"""Per-datapoint tables on several processes, in checkpoints.

Each rank holds the rows n % world == rank (``LocalGaussian(shard=...)``); checkpoints hold
whole tables, assembled on rank 0 and cut into each rank's rows on restore. The tables' Adam
moments are sharded the same way.
"""

from __future__ import annotations

from typing import Any

from dgm.variational.local import gather_rows, shard_rows

ROWS = ("lam", "log_eta", "exp_avg", "exp_avg_sq")  # the tensors with one row per datapoint


def whole_rows(state: dict[str, Any], dist: Any) -> dict[str, Any]:
    """``state`` with its row tensors (:data:`ROWS`) put together from every rank's rows, on
    rank 0; the other ranks (which write nothing) get their own ``state`` back. ``dist``: the
    run's :class:`dgm.train.distributed.Distributed` (enabled)."""
    shards = dist.gather_to_main(state)
    if shards is None:
        return state
    return {
        k: gather_rows([shard[k] for shard in shards]) if k in ROWS else v for k, v in state.items()
    }


def own_rows(state: dict[str, Any], dist: Any) -> dict[str, Any]:
    """``state`` with its whole-table row tensors cut down to this rank's rows."""
    rank, world = dist.rank, dist.world
    return {k: shard_rows(v, rank, world) if k in ROWS else v for k, v in state.items()}
