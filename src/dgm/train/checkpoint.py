"""Checkpoints: tensors in safetensors, everything else in JSON; nothing is ever unpickled.

Layout of a run directory's ``checkpoints/``::

    epoch-0005/
        tensors.safetensors   model.*, posterior.*, optimizer.*, rng.* tensors
        state.json            epoch, step, config, the optimizer's non-tensor state, RNG states

A checkpoint is written into a hidden temporary directory, every file fsynced, and then renamed
into place, so a crash never leaves a half-written checkpoint under a real name; ``latest`` only
considers complete ``epoch-*`` directories.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dgm.config import Config
from dgm.config import validate as validate_config
from dgm.errors import CheckpointError, ConfigError, shorten
from dgm.files import WRITE_FAULTS, default_mode, fsync_dir, read_json, write_error
from dgm.train.validate import (
    MAX_EPOCH,
    MAX_STEP,
    check_extra,
    check_rng,
    integer,
    mapping,
    show,
)

FORMAT = 1
TENSORS = "tensors.safetensors"
STATE = "state.json"
#: the files of a checkpoint directory: all dgm writes there
FILES = (TENSORS, STATE)
#: a state.json is read only if at most this large (a real one: tens of kilobytes)
MAX_STATE_BYTES = 64 * 1024**2
_KEYS = {"format", "epoch", "step", "config", "modules", "optimizer", "rng", "extra"}
_NAME = re.compile(r"epoch-(\d{4,10})")


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch in a checkpoint directory's name (``epoch-0012``: 12), or None."""
    m = _NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by references; collect them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def _check_node(obj: Any, where: Path, key: str) -> None:
    """``obj`` is what :func:`_flatten` writes: JSON scalars, lists, ``{"__tensor__": name}``
    and ``{"__dict__": [[key, value], ...]}`` (keys: strings or integers), nothing else."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_node(v, where, f"{key}.{i}")
        return
    if isinstance(obj, dict) and set(obj) == {"__tensor__"} and isinstance(obj["__tensor__"], str):
        return
    if isinstance(obj, dict) and set(obj) == {"__dict__"} and isinstance(obj["__dict__"], list):
        seen = set()
        for pair in obj["__dict__"]:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and isinstance(pair[0], str | int)
                and not isinstance(pair[0], bool)
                and pair[0] not in seen
            ):
                raise CheckpointError(
                    f"{where}: key '{key}' holds {show(pair)}; expected [key, value] pairs with "
                    "distinct string or integer keys"
                )
            seen.add(pair[0])
            _check_node(pair[1], where, f"{key}.{pair[0]}")
        return
    raise CheckpointError(
        f"{where}: key '{key}' is {show(obj)}; expected a value, a list, a tensor reference "
        "or a __dict__ of pairs"
    )


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise CheckpointError(f"{where}: tensor '{key}' is missing")
        return tensors[key]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _unflatten(v, tensors, where) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, where) for v in obj]
    return obj


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@dataclass
class Checkpoint:
    """What a run needs to continue exactly where it stopped."""

    epoch: int
    step: int
    config: dict[str, Any]
    modules: dict[str, dict[str, torch.Tensor]]  # name -> state_dict (model, posterior)
    optimizer: dict[str, Any]
    rng: dict[str, Any]  # torch / data generator states as tensors, python / numpy as JSON
    extra: dict[str, Any]  # train time, last metrics
    #: ``config`` validated (set when a checkpoint is loaded)
    saved: Config | None = None


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "data": generator.get_state(),
        "python": json.loads(json.dumps(random.getstate())),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_generator_state(generator: torch.Generator, state: torch.Tensor) -> None:
    """``generator.set_state(state)``; a state written by a generator of another device type
    (a run resumed with another ``train.device``: a CPU generator's state is 5,056 bytes, a
    CUDA one's 16) cannot be set, so the generator is seeded from a hash of it instead: the run
    goes on from the same checkpoint the same way every time, with a new random stream."""
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return
    digest = hashlib.sha256(state.cpu().numpy().tobytes()).digest()
    generator.manual_seed(int.from_bytes(digest[:8], "little"))


def restore_rng(rng: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    set_generator_state(generator, rng["data"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    np.random.set_state(
        (rng["numpy"][0], np.array(rng["numpy"][1], dtype=np.uint32), *rng["numpy"][2:])
    )
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(directory: Path, ckpt: Checkpoint, keep: int = 3) -> Path:
    """Write ``directory/epoch-NNNN`` atomically; keep the newest ``keep`` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".epoch-*.tmp"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = directory / f"epoch-{ckpt.epoch:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory))
    try:
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp's 0o700 would hide it from others
        tensors: dict[str, torch.Tensor] = {}
        for name, state in ckpt.modules.items():
            for key, value in state.items():
                tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
        state = {
            "format": FORMAT,
            "epoch": ckpt.epoch,
            "step": ckpt.step,
            "config": ckpt.config,
            "modules": {name: sorted(state) for name, state in ckpt.modules.items()},
            "optimizer": _flatten(ckpt.optimizer, "optimizer", tensors),
            "rng": _flatten(ckpt.rng, "rng", tensors),
            "extra": ckpt.extra,
        }
        for name, write in (
            (TENSORS, lambda p: save_file(tensors, str(p))),
            (STATE, lambda p: p.write_text(json.dumps(state) + "\n", encoding="utf-8")),
        ):
            try:  # a full disk: OSError, or safetensors' own SafetensorError
                write(tmp / name)
            except WRITE_FAULTS as err:
                raise write_error(final / name, err) from None
        for f in (TENSORS, STATE):
            os.chmod(tmp / f, default_mode())
            _fsync_file(tmp / f)
        fsync_dir(tmp)
        if final.exists():  # a re-run of the same epoch (resumed from an older checkpoint)
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(directory)[:-keep]:  # hidden first: never half a checkpoint
        hidden = old.with_name(f".{old.name}.old")
        shutil.rmtree(hidden, ignore_errors=True)
        os.replace(old, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (``epoch-NNNN`` with both files), oldest first."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.glob("epoch-*")
        if p.is_dir() and (p / STATE).is_file() and (p / TENSORS).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def run_checkpoint(run_dir: Path, checkpoint: Path | str | None = None, what: str = "load") -> Path:
    """``checkpoint`` if given, else the latest complete checkpoint of the run in ``run_dir``;
    a run with none is one CheckpointError line (``what``: the verb it names)."""
    if checkpoint is not None:
        return Path(checkpoint)
    found = latest_checkpoint(Path(run_dir) / "checkpoints")
    if found is None:
        raise CheckpointError(f"{Path(run_dir) / 'checkpoints'}: no complete checkpoint to {what}")
    return found


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint directory; any problem is a one-line CheckpointError naming the file
    and key: ``state.json`` is read only when a small regular file of shallow JSON, and every
    value it holds is checked (:mod:`dgm.train.validate`) before anything uses it."""
    path = Path(path)
    state_path, tensors_path = path / STATE, path / TENSORS
    try:
        state = read_json(state_path, MAX_STATE_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"{state_path}: missing") from None
    except OSError as err:
        raise CheckpointError(f"{state_path}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise CheckpointError(f"{state_path}: not a valid checkpoint state ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_path}: unknown checkpoint format (expected format {FORMAT})")
    unknown = sorted(set(state) - _KEYS)
    missing = sorted({"epoch", "step", "config", "modules", "optimizer", "rng"} - set(state))
    if unknown or missing:
        what = (
            f"key '{shorten(unknown[0])}' is unknown"
            if unknown
            else f"key '{missing[0]}' is missing"
        )
        raise CheckpointError(f"{state_path}: {what}")
    epoch = integer(state["epoch"], state_path, "epoch", 0, MAX_EPOCH)
    named = checkpoint_epoch(path)
    if named is not None and named != epoch:
        raise CheckpointError(
            f"{state_path}: key 'epoch' is {epoch}; expected {named}, the directory's epoch"
        )
    step = integer(state["step"], state_path, "step", 0, MAX_STEP)
    if not isinstance(state["config"], dict):
        raise CheckpointError(
            f"{state_path}: key 'config' is {show(state['config'])}; expected a JSON object"
        )
    try:
        saved = validate_config(state["config"], f"{state_path} (key 'config')")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    if epoch > saved.train.epochs:
        raise CheckpointError(
            f"{state_path}: key 'epoch' is {epoch}; the run it was written for has "
            f"{saved.train.epochs} epochs"
        )
    modules_state = mapping(state["modules"], state_path, "modules")
    for key in ("optimizer", "rng"):
        _check_node(state[key], state_path, key)
    extra = check_extra(state.get("extra", {}), epoch, saved, state_path)
    try:
        tensors = load_file(str(tensors_path))
    except FileNotFoundError:
        raise CheckpointError(f"{tensors_path}: missing") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{tensors_path}: not a valid safetensors file ({err})") from None
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for name, keys in modules_state.items():
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise CheckpointError(
                f"{state_path}: key 'modules.{shorten(name)}' is {show(keys)}; expected a list "
                "of tensor names"
            )
        missing = [k for k in keys if f"{name}.{k}" not in tensors]
        if missing:
            raise CheckpointError(f"{tensors_path}: missing tensors {name}.{missing[0]} ...")
        modules[name] = {k: tensors[f"{name}.{k}"] for k in keys}
    optimizer = _unflatten(state["optimizer"], tensors, tensors_path)
    rng = _unflatten(state["rng"], tensors, tensors_path)
    check_rng(rng, state_path)
    return Checkpoint(
        epoch=epoch,
        step=step,
        config=state["config"],
        modules=modules,
        optimizer=optimizer,
        rng=rng,
        extra=extra,
        saved=saved,
    )


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """``load_state_dict`` that refuses missing, unexpected or wrongly shaped tensors clearly."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{where}: does not match the model ({what})")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise CheckpointError(
                f"{where}: tensor {key} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(value.shape)}"
            )
    module.load_state_dict(state)
