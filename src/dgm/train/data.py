"""The device a run computes on, and its data (see :class:`dgm.data.Data` and
:func:`dgm.build.build_data`)."""

from __future__ import annotations

import torch

from dgm.build import build_data as load_data
from dgm.data.arrays import Data
from dgm.errors import UsageError

__all__ = ["Data", "load_data", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"train.device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"train.device = {name!r} but CUDA is not available here (use cpu or auto)"
        )
    return device
