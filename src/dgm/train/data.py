"""The device a run computes on (checked by :mod:`dgm.devices`), and its data (see
:class:`dgm.data.Data` and :func:`dgm.build.build_data`)."""

from __future__ import annotations

from dgm.build import build_data as load_data
from dgm.data.arrays import Data
from dgm.devices import resolve_device

__all__ = ["Data", "load_data", "resolve_device"]
