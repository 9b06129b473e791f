"""The devices dgm computes on, checked in one place: ``train.device`` and every ``--device``.

dgm runs on the CPU and on CUDA. Any other name torch knows (``meta``, ``mps``, ``xpu``, ...) or
a CUDA device this machine does not have is refused in one line that lists the devices here.
"""

from __future__ import annotations

import re

import torch

from dgm.errors import UsageError, shorten

#: the names dgm accepts; ``auto`` is CUDA when present, else the CPU
SYNTAX = "auto, cpu, cuda or cuda:N"
_NAME = re.compile(r"auto|cpu|cuda(?::(\d{1,6}))?")


def available_devices() -> list[str]:
    """The devices of this machine that dgm can use: ``cpu``, then ``cuda:0``, ``cuda:1``, ..."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu", *(f"cuda:{i}" for i in range(cuda))]


def resolve_device(name: object, option: str = "train.device") -> torch.device:
    """The torch device for ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), or a one-line
    :class:`UsageError` naming ``option`` and the devices this machine has."""
    here = ", ".join(available_devices())
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    given = shorten(repr(name))
    said = f"{option} {given}" if option.startswith("-") else f"{option} = {given}"
    if match is None:
        raise UsageError(f"{said}: expected {SYNTAX} (devices here: {here})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(
            f"{said} but CUDA is not available here (devices here: {here}; use cpu or auto)"
        )
    index = match.group(1)
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise UsageError(f"{said}: this machine has {count} CUDA device(s) ({here})")
    return torch.device(name)
