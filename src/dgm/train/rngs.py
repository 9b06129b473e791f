"""A run's random number generators in checkpoints, with torchrun's per-rank ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dgm.errors import CheckpointError
from dgm.train.checkpoint import capture_rng, restore_rng, set_generator_state


def capture_rngs(
    generator: torch.Generator, noise_generator: torch.Generator | None, dist: Any
) -> dict[str, Any]:
    """The RNG states; distributed, every rank's (in ``ranks``: its global torch RNG and its
    noise generator), gathered on every rank."""
    rng = capture_rng(generator)
    if not dist.enabled:
        return rng
    mine = {"torch": rng["torch"], "noise": noise_generator.get_state()}
    return {**rng, "ranks": dist.gather(mine)}


def restore_rngs(
    rng: dict[str, Any],
    generator: torch.Generator,
    noise_generator: torch.Generator | None,
    dist: Any,
    path: Path,
) -> None:
    """Put back what :func:`capture_rngs` took; refuse another number of processes."""
    restore_rng(rng, generator)
    ranks = rng.get("ranks")
    if (ranks is not None and len(ranks) != dist.world) or (ranks is None and dist.enabled):
        written = len(ranks) if ranks is not None else 1
        raise CheckpointError(
            f"{path}: was written by {written} process(es); resume it with as many "
            f"(now {dist.world})"
        )
    if ranks is not None:
        torch.set_rng_state(ranks[dist.rank]["torch"])
        set_generator_state(noise_generator, ranks[dist.rank]["noise"])
