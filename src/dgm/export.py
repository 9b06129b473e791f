"""Exported models: a run's weights and configuration only, to share or to ship.

    OUT/
        config.json           the run's validated configuration
        weights.safetensors   the weights of the modules a loaded run needs, named module.key
                              (no optimizer state, no random-number state: nothing to resume)
        dgm-export.json       the format, each module's tensor names, the epoch, the run's last
                              metrics row, and the versions that wrote it

:func:`dgm.load_run` reads an export as it reads a run directory (``dgm sample OUT``,
``dgm eval OUT``). ``pretrained:NAME`` names an export that ships inside the package
(:func:`pretrained_names`): ``pretrained:mnist-vae`` is the main job's VAE (``dgm train``: 20
epochs), so that ``dgm sample pretrained:mnist-vae`` works offline on a fresh install.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import dgm.families as families
from dgm.build import fitted_by_em
from dgm.config import Config, load_run_config
from dgm.errors import CheckpointError, UsageError, shorten
from dgm.files import WRITE_FAULTS, default_mode, fsync_dir, read_json, write_error
from dgm.train.checkpoint import load_checkpoint, run_checkpoint
from dgm.train.run import read_metrics

EXPORT = "dgm-export.json"
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
FORMAT = 1
#: the exports that ship with dgm (``pretrained:NAME``)
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
PREFIX = "pretrained:"


@dataclass
class Exported:
    """What an export holds: its configuration, each module's state, and its record."""

    config: Config
    modules: dict[str, dict[str, torch.Tensor]]
    epoch: int
    info: dict[str, Any]


def pretrained_names() -> list[str]:
    """The names ``pretrained:NAME`` accepts: the exports that ship with dgm."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / EXPORT).is_file())


def is_pretrained(path: str | Path) -> bool:
    return str(path).startswith(PREFIX)


def resolve(path: str | Path) -> Path:
    """The directory of a run, an export, or a shipped ``pretrained:NAME``."""
    if not is_pretrained(path):
        return Path(path)
    name = str(path)[len(PREFIX) :]
    if name not in pretrained_names():
        have = ", ".join(PREFIX + n for n in pretrained_names()) or "none"
        raise UsageError(f"{shorten(str(path))}: no such pretrained model (dgm ships: {have})")
    return PRETRAINED_DIR / name


def is_export(path: Path) -> bool:
    """Whether ``path`` holds an export (not a run directory with checkpoints)."""
    return (Path(path) / EXPORT).is_file()


def module_names(config: Config) -> tuple[str, ...]:
    """The modules a loaded run of ``config`` needs: a family's (its generator, denoiser...),
    an exact model's, or the variational model and its posterior."""
    family = families.family(config.model.kind)
    if family is not None:
        return family.modules
    return ("model",) if fitted_by_em(config) else ("model", "posterior")


def export_run(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write the weights of the run in ``run_dir`` (its latest checkpoint, or ``checkpoint``)
    and its configuration to the new directory ``out``; returns ``out``. ``out`` must not
    exist (or be empty): nothing there is replaced. Written whole or not at all."""
    source = resolve(run_dir)
    config = load_run_config(source / CONFIG)
    out = Path(out)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise UsageError(f"{out}: already exists; dgm export writes a new directory")
    if is_export(source):
        exported = read_export(source)
        modules, epoch, metrics = exported.modules, exported.epoch, exported.info.get("metrics")
    elif fitted_by_em(config):
        from dgm.train.classical import WEIGHTS as FITTED

        modules, epoch = {"model": _read_weights(source / FITTED)}, 0
        metrics = (read_metrics(source) or [None])[-1]
    else:
        path = run_checkpoint(source, checkpoint, "export")
        ckpt = load_checkpoint(path)
        missing = [n for n in module_names(config) if n not in ckpt.modules]
        if missing:
            raise CheckpointError(f"{path}: holds no module '{missing[0]}' to export")
        modules = {n: ckpt.modules[n] for n in module_names(config)}
        epoch = ckpt.epoch
        rows = [r for r in read_metrics(source) if r.get("epoch") == epoch]
        metrics = rows[-1] if rows else None
    tensors = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, state in modules.items()
        for key, value in state.items()
    }
    info = {
        "format": FORMAT,
        "epoch": epoch,
        "modules": {name: sorted(state) for name, state in modules.items()},
        "metrics": metrics,
        "versions": _versions(),
    }
    _write_directory(
        out,
        {
            CONFIG: lambda p: p.write_text(json.dumps(config.to_dict(), indent=2) + "\n", "utf-8"),
            WEIGHTS: lambda p: save_file(tensors, str(p)),
            EXPORT: lambda p: p.write_text(json.dumps(info, indent=2) + "\n", "utf-8"),
        },
    )
    return out


def read_export(path: str | Path) -> Exported:
    """Read the export in ``path``; a fault is one CheckpointError line naming the file."""
    path = resolve(path)
    record = path / EXPORT
    try:
        info = read_json(record, 1024**2)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{record}: not a dgm export ({err})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{record}: unknown export format (expected format {FORMAT})")
    epoch, names = info.get("epoch"), info.get("modules")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointError(f"{record}: key 'epoch' is {shorten(repr(epoch))}; expected >= 0")
    if not isinstance(names, dict) or not all(
        isinstance(keys, list) and all(isinstance(k, str) for k in keys) for keys in names.values()
    ):
        raise CheckpointError(f"{record}: key 'modules' is not a map of tensor-name lists")
    config = load_run_config(path / CONFIG)
    tensors = _read_weights(path / WEIGHTS)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for name, keys in names.items():
        missing = [k for k in keys if f"{name}.{k}" not in tensors]
        if missing:
            raise CheckpointError(f"{path / WEIGHTS}: missing tensor {name}.{missing[0]}")
        modules[name] = {k: tensors[f"{name}.{k}"] for k in keys}
    return Exported(config, modules, epoch, info)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        dgm_version = version("dgm")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        dgm_version = "unknown"
    return {"dgm": dgm_version, "torch": torch.__version__, "python": platform.python_version()}


def _write_directory(out: Path, files: dict[str, Any]) -> None:
    """Write ``files`` (name -> writer of a path) into a hidden directory beside ``out``, then
    rename it to ``out``: a crash leaves no half export, and a fault names the file."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise write_error(out, err) from None
    try:
        os.chmod(tmp, default_mode(directory=True))
        for name, write in files.items():
            try:
                write(tmp / name)
                os.chmod(tmp / name, default_mode())
            except WRITE_FAULTS as err:
                raise write_error(out / name, err) from None
        fsync_dir(tmp)
        if out.is_dir():  # an empty directory given as OUT
            out.rmdir()
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
