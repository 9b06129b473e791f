"""Precision contexts shared by the models and the trainer."""

from __future__ import annotations

import contextlib

import torch


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)`` where autocast is on, else a no-op context.

    Distributions, the KL and the bound compute in their inputs' precision even under
    ``train.precision = "bfloat16"``; where autocast is off, no context is entered at all.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
