"""What makes a directory a dgm run, and the record of the files dgm wrote into it.

A run directory is dgm's when it holds ``dgm-run.json``, written before anything else when the
run is created; it lists every file dgm has written there since (config, metrics, pictures,
evaluations), and ``--force`` removes only those, the checkpoints dgm wrote, and the leftovers
of a killed write. A directory from before the record existed counts as a run when its
``config.json`` is a valid dgm configuration; its files are then the names dgm writes
(:data:`KNOWN`). dgm never writes into a directory that is neither empty nor a run, and never
through a symbolic link.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

from dgm.errors import ConfigError, UsageError, shorten
from dgm.files import atomic_write_text, read_json

MANIFEST = "dgm-run.json"
FORMAT = 1
#: files of a run directory that belong to no run (the lock) or are the record itself
HOUSEKEEPING = (".lock", MANIFEST)
#: the names dgm writes into a run directory (for runs without a record)
KNOWN = (
    "config.json",
    "metrics.jsonl",
    "samples.png",
    "train_vs_generated.png",
    "reconstructions.png",
    "curves.png",
    "gap.json",
    "gap.png",
    "eval-*.json",
    "score*.json",
    "score*.png",
    "model.safetensors",
    "latent.png",
    "report.html",
)
#: a checkpoint directory's name, and what dgm writes in one
CHECKPOINT_NAME = "epoch-[0-9][0-9][0-9][0-9]*"
CHECKPOINT_FILES = ("tensors.safetensors", "state.json")
_MAX_BYTES = 1024**2


def _entries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name not in HOUSEKEEPING)


def recorded(run_dir: Path) -> list[str] | None:
    """The files the record lists, or None when the directory has no record. A record that
    is not dgm's (bad JSON, other keys) is a UsageError naming it."""
    path = Path(run_dir) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = read_json(path, _MAX_BYTES, max_depth=4)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a dgm run record ({shorten(err, 120)})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not (
        isinstance(data, dict)
        and data.get("format") == FORMAT
        and isinstance(files, list)
        and all(isinstance(f, str) and "/" not in f and f not in ("", ".", "..") for f in files)
    ):
        raise UsageError(f"{path}: not a dgm run record (expected format {FORMAT} and files)")
    return files


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a dgm run: it has the record, or (a run from before the record)
    a ``config.json`` that is a valid dgm configuration."""
    run_dir = Path(run_dir)
    if recorded(run_dir) is not None:
        return True
    config = run_dir / "config.json"
    if not config.is_file() or config.is_symlink():
        return False
    from dgm.config import load_run_config

    try:
        load_run_config(config)
    except ConfigError:
        return False
    return True


def check_writable(run_dir: Path, force: bool) -> None:
    """Refuse to start a new run in ``run_dir`` unless it is missing, empty, or (with ``force``)
    a dgm run. Never a symbolic link, never a directory of someone else's files."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise UsageError(
            f"{run_dir}: is a symbolic link (to {os.readlink(run_dir)}); give a real directory"
        )
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a directory")
    entries = _entries(run_dir)
    if not entries and recorded(run_dir) is None:
        return
    if not is_run(run_dir):
        shown = ", ".join(shorten(e, 40) for e in entries[:3])
        raise UsageError(
            f"{run_dir}: holds {len(entries)} file(s) that are not a dgm run ({shown}); dgm "
            "writes only into a new or empty directory or its own run"
        )
    if not force:
        raise UsageError(
            f"{run_dir}: already holds a run; use --resume {run_dir} to continue it, "
            "or --force to replace it"
        )


def _listed(run_dir: Path) -> list[Path]:
    names = recorded(run_dir)
    if names is None:  # a run from before the record: the names dgm writes
        names = [e for e in _entries(run_dir) if any(fnmatch.fnmatch(e, k) for k in KNOWN)]
    return [run_dir / n for n in names]


def dgm_checkpoints(checkpoints: Path) -> list[Path]:
    """Checkpoint directories dgm wrote under ``checkpoints`` (``epoch-NNNN`` holding only a
    checkpoint's files) and the hidden leftovers of killed writes (``.epoch-*.tmp``,
    ``.epoch-*.old``)."""
    if not checkpoints.is_dir() or checkpoints.is_symlink():
        return []
    found = []
    for p in sorted(checkpoints.iterdir()):
        if p.is_symlink() or not p.is_dir():
            continue
        mine = fnmatch.fnmatch(p.name, CHECKPOINT_NAME) or (
            p.name.startswith(".epoch-") and p.name.endswith((".tmp", ".old"))
        )
        if mine and all(f.name in CHECKPOINT_FILES for f in p.iterdir()):
            found.append(p)
    return found


def remove_run(run_dir: Path) -> list[Path]:
    """Remove what dgm wrote in the run ``run_dir`` (the recorded files, its checkpoints, the
    record) and return what was removed; the user's own files stay."""
    run_dir = Path(run_dir)
    removed = []
    checkpoints = run_dir / "checkpoints"
    for p in dgm_checkpoints(checkpoints):
        shutil.rmtree(p)
        removed.append(p)
    if checkpoints.is_dir() and not checkpoints.is_symlink() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    for p in _listed(run_dir):
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed.append(p)
    for p in run_dir.glob(".*.tmp"):  # a killed atomic write of one of dgm's files
        if p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(p)
    record = run_dir / MANIFEST
    if record.exists():
        record.unlink()
    return removed


def create(run_dir: Path) -> None:
    """Mark ``run_dir`` (created if missing) as a dgm run with an empty record."""
    atomic_write_text(Path(run_dir) / MANIFEST, _text([]))


def record(run_dir: Path, *paths: Path | str) -> None:
    """Add the files ``paths`` (in ``run_dir``) to its record, if it has one."""
    run_dir = Path(run_dir)
    try:
        names = recorded(run_dir)
    except UsageError:
        return  # a damaged record is reported when the run is replaced, not on every write
    if names is None:
        return
    new = [Path(p).name for p in paths if Path(p).parent.resolve() == run_dir.resolve()]
    if set(new) <= set(names):
        return
    atomic_write_text(run_dir / MANIFEST, _text(sorted({*names, *new})))


def _text(files: list[str]) -> str:
    return json.dumps({"format": FORMAT, "files": files}, indent=2) + "\n"


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove what a killed write left in a run: hidden temporary files of dgm's atomic writes
    (``.metrics.jsonl.*.tmp``), hidden checkpoint directories (``.epoch-*.tmp``), and
    checkpoint directories a kill left half-deleted while pruning (an ``epoch-NNNN`` missing
    one of its files: it was never complete, or was being removed)."""
    run_dir = Path(run_dir)
    removed = []
    for p in run_dir.glob(".*.tmp"):
        if p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(p)
    for p in dgm_checkpoints(run_dir / "checkpoints"):
        names = {f.name for f in p.iterdir()}
        if p.name.startswith(".") or names != set(CHECKPOINT_FILES):
            shutil.rmtree(p)
            removed.append(p)
    return removed
