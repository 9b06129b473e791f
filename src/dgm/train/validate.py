"""Every value a run's files give back is checked before it is used.

A checkpoint's ``state.json`` and a run's ``metrics.jsonl`` and ``config.json`` may have been
edited, truncated or corrupted. What is read from them is checked here against what dgm writes
(types, finite numbers, bounds, the structure of the optimizers' and generators' states), and a
fault is one :class:`dgm.errors.CheckpointError` line naming the file, the key and what was
expected: never a TypeError, an OverflowError or a RecursionError further on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from dgm.config import RESUME_KEYS, Config
from dgm.errors import CheckpointError, shorten

#: sane bounds on counters read back (a run of 10^9 epochs or 10^15 steps is not a real one)
MAX_EPOCH = 10**9
MAX_STEP = 10**15
MAX_SECONDS = 10.0**12


def show(value: Any) -> str:
    """A value for a message: its repr, cut short (a huge integer is not converted)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, dict | list):
        return f"{type(value).__name__} {shorten(repr(value), 40)}"
    return shorten(repr(value), 60)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(value: Any, where: Path | str, key: str, low: int, high: int) -> int:
    """``value`` if it is an integer in ``[low, high]``; else one CheckpointError line."""
    if not is_int(value) or not low <= value <= high:
        raise CheckpointError(
            f"{where}: key '{key}' is {show(value)}; expected an integer from {low} to {high}"
        )
    return value


def number(
    value: Any, where: Path | str, key: str, low: float, high: float, *, open_low: bool = False
) -> float:
    """``value`` as a float if it is a finite number in ``[low, high]`` (``(low, high]`` with
    ``open_low``); else one CheckpointError line."""
    ok = is_number(value) and math.isfinite(float(value))
    ok = ok and (low < value if open_low else low <= value) and value <= high
    if not ok:
        bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise CheckpointError(
            f"{where}: key '{key}' is {show(value)}; expected a finite number in {bounds}"
        )
    return float(value)


def mapping(value: Any, where: Path | str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: key '{key}' is {show(value)}; expected a JSON object")
    return value


# -- metrics rows ------------------------------------------------------------------------------

#: keys of a metrics row that hold numbers (besides every train_* and test_* key)
_NUMERIC = {"lr", "epoch_time_s", "images_per_s", "train_time_s", "skipped_steps", "step"}
_SCALAR = (type(None), bool, int, float, str)


def metrics_row_fault(row: Any) -> str | None:
    """Why ``row`` is not a metrics row as dgm writes one (a flat JSON object of scalars, or
    objects of scalars such as ``lr_change``; numbers under ``train_*``, ``test_*`` and the
    counters; ``epoch`` and ``iteration`` non-negative integers), or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, found {show(row)}"
    for key, value in row.items():
        if isinstance(value, dict):
            if not all(isinstance(v, _SCALAR) for v in value.values()):
                return f"key '{shorten(key)}' nests more than one level"
            continue
        if not isinstance(value, _SCALAR):
            return f"key '{shorten(key)}' is {show(value)}; expected a number or a string"
        numeric = key in _NUMERIC or key.startswith(("train_", "test_"))
        if numeric and value is not None and not is_number(value):  # null: undefined
            return f"key '{shorten(key)}' is {show(value)}; expected a number"
        if key in ("epoch", "iteration") and not (is_int(value) and 0 <= value <= MAX_EPOCH):
            return f"key '{key}' is {show(value)}; expected an integer from 0 to {MAX_EPOCH}"
    return None


# -- a checkpoint's extra state -----------------------------------------------------------------

_EXTRA = {"train_time_s", "metrics", "lr_scale", "recoveries"}


def check_extra(extra: Any, epoch: int, saved: Config, where: Path) -> dict[str, Any]:
    """The training core's ``extra`` of a checkpoint, every value checked."""
    extra = mapping(extra, where, "extra")
    unknown = sorted(set(extra) - _EXTRA)
    if unknown:
        raise CheckpointError(
            f"{where}: key 'extra.{shorten(unknown[0])}' is unknown; expected only "
            f"{', '.join(sorted(_EXTRA))}"
        )
    if "train_time_s" in extra:
        number(extra["train_time_s"], where, "extra.train_time_s", 0.0, MAX_SECONDS)
    if "lr_scale" in extra:
        number(extra["lr_scale"], where, "extra.lr_scale", 0.0, 1.0, open_low=True)
    if "recoveries" in extra:
        integer(extra["recoveries"], where, "extra.recoveries", 0, saved.train.max_recoveries)
    metrics = extra.get("metrics", {})
    fault = metrics_row_fault(metrics)
    if fault is not None:
        raise CheckpointError(f"{where}: key 'extra.metrics': {fault}")
    if metrics and metrics.get("epoch") != epoch:
        raise CheckpointError(
            f"{where}: key 'extra.metrics.epoch' is {show(metrics.get('epoch'))}; expected the "
            f"checkpoint's epoch, {epoch}"
        )
    return extra


# -- random number generators ---------------------------------------------------------------------


def _byte_tensor(value: Any, where: Path, key: str) -> None:
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1):
        raise CheckpointError(
            f"{where}: key '{key}' is {show(value)}; expected a generator state (a tensor of bytes)"
        )


def _words(value: Any, n: int, where: Path, key: str) -> None:
    ok = isinstance(value, list) and len(value) == n
    if not ok or not all(is_int(v) and 0 <= v < 2**32 for v in value):
        raise CheckpointError(
            f"{where}: key '{key}' is {show(value)}; expected {n} integers from 0 to 2**32 - 1"
        )


def check_rng(rng: Any, where: Path) -> None:
    """The generator states of a checkpoint (:func:`dgm.train.rngs.capture_rngs`)."""
    rng = mapping(rng, where, "rng")
    for key in ("torch", "data", "python", "numpy"):
        if key not in rng:
            raise CheckpointError(f"{where}: key 'rng.{key}' is missing")
    unknown = sorted(set(rng) - {"torch", "data", "python", "numpy", "cuda", "ranks"})
    if unknown:
        raise CheckpointError(f"{where}: key 'rng.{shorten(unknown[0])}' is unknown")
    _byte_tensor(rng["torch"], where, "rng.torch")
    _byte_tensor(rng["data"], where, "rng.data")
    python = rng["python"]
    if not (isinstance(python, list) and len(python) == 3 and python[0] == 3):
        raise CheckpointError(
            f"{where}: key 'rng.python' is {show(python)}; expected [3, state, gauss]"
        )
    _words(python[1], 625, where, "rng.python.1")
    if python[1][-1] > 624:
        raise CheckpointError(
            f"{where}: key 'rng.python.1.624' is {python[1][-1]}; expected <= 624"
        )
    if python[2] is not None and not (is_number(python[2]) and math.isfinite(python[2])):
        raise CheckpointError(f"{where}: key 'rng.python.2' is {show(python[2])}; expected null")
    numpy = rng["numpy"]
    if not (isinstance(numpy, list) and len(numpy) == 5 and numpy[0] == "MT19937"):
        raise CheckpointError(
            f"{where}: key 'rng.numpy' is {show(numpy)}; expected ['MT19937', keys, pos, "
            "has_gauss, cached_gaussian]"
        )
    _words(numpy[1], 624, where, "rng.numpy.1")
    integer(numpy[2], where, "rng.numpy.2", 0, 624)
    integer(numpy[3], where, "rng.numpy.3", 0, 1)
    number(numpy[4], where, "rng.numpy.4", -1e308, 1e308)
    if "cuda" in rng:
        cuda = rng["cuda"]
        if not isinstance(cuda, list):
            raise CheckpointError(f"{where}: key 'rng.cuda' is {show(cuda)}; expected a list")
        for i, state in enumerate(cuda):
            _byte_tensor(state, where, f"rng.cuda.{i}")
    if "ranks" in rng:
        ranks = rng["ranks"]
        if not isinstance(ranks, list) or not ranks:
            raise CheckpointError(f"{where}: key 'rng.ranks' is {show(ranks)}; expected a list")
        for i, rank in enumerate(ranks):
            rank = mapping(rank, where, f"rng.ranks.{i}")
            if set(rank) != {"torch", "noise"}:
                raise CheckpointError(
                    f"{where}: key 'rng.ranks.{i}' has keys {sorted(rank)[:4]}; expected torch, "
                    "noise"
                )
            _byte_tensor(rank["torch"], where, f"rng.ranks.{i}.torch")
            _byte_tensor(rank["noise"], where, f"rng.ranks.{i}.noise")


# -- optimizers -----------------------------------------------------------------------------------


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if is_number(a) and is_number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _torch_optimizer_state(saved: Any, template: dict[str, Any], where: Path, key: str) -> None:
    """A torch optimizer's state dict against the method's own (``template``): the same groups
    and parameters, the same hyperparameters (the run's configuration fixes them; the learning
    rate and SGD's momentum are set by schedules: only their range is checked), per-parameter
    states of known parameters."""
    saved = mapping(saved, where, key)
    if set(saved) != {"state", "param_groups"}:
        raise CheckpointError(
            f"{where}: key '{key}' has keys {sorted(map(str, saved))[:4]}; expected state, "
            "param_groups"
        )
    groups, expected = saved["param_groups"], template["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(expected):
        raise CheckpointError(
            f"{where}: key '{key}.param_groups' is {show(groups)}; expected {len(expected)} "
            "parameter group(s)"
        )
    params: set[int] = set()
    for i, (group, mine) in enumerate(zip(groups, expected, strict=True)):
        where_key = f"{key}.param_groups.{i}"
        group = mapping(group, where, where_key)
        for name, value in mine.items():
            if name not in group and name != "params":
                continue  # a key of a newer torch: the optimizer fills in its default
            if name not in group:
                raise CheckpointError(f"{where}: key '{where_key}.params' is missing")
            if name in ("lr", "initial_lr"):
                number(group[name], where, f"{where_key}.{name}", 0.0, 1e6, open_low=True)
            elif name == "momentum" and type(value) is float:  # SGD's, scheduled (the RBM)
                number(group[name], where, f"{where_key}.{name}", 0.0, 1.0)
            elif not _same_value(group[name], value):
                raise CheckpointError(
                    f"{where}: key '{where_key}.{name}' is {show(group[name])}; the run's "
                    f"configuration gives {show(value)}"
                )
        params.update(mine["params"])
    state = mapping(saved["state"], where, f"{key}.state")
    for index, per_param in state.items():
        if not (is_int(index) and index in params):
            raise CheckpointError(
                f"{where}: key '{key}.state' names parameter {show(index)}; expected one of "
                f"0..{max(params, default=-1)}"
            )
        per_param = mapping(per_param, where, f"{key}.state.{index}")
        for name, value in per_param.items():
            if not (isinstance(value, torch.Tensor) or is_number(value)):
                raise CheckpointError(
                    f"{where}: key '{key}.state.{index}.{shorten(name)}' is {show(value)}; "
                    "expected a tensor"
                )


def check_optimizer_state(saved: Any, template: Any, where: Path, key: str = "optimizer") -> None:
    """A checkpoint's optimizer states (``saved``) against the method's (``template``, from
    :meth:`Method.optimizer_state`): the same names, and each torch optimizer's state checked
    by :func:`_torch_optimizer_state`. A bare optimizer state where the method has one
    optimizer (as runs saved before per-datapoint tables did) is taken for it."""
    if isinstance(template, dict) and {"state", "param_groups"} <= set(template):
        _torch_optimizer_state(saved, template, where, key)
        return
    if not isinstance(template, dict):
        return
    if isinstance(saved, dict) and "param_groups" in saved and len(template) == 1:
        (only,) = template.values()
        check_optimizer_state(saved, only, where, key)
        return
    saved = mapping(saved, where, key)
    if set(saved) != set(template):
        raise CheckpointError(
            f"{where}: key '{key}' holds {sorted(map(str, saved))[:4]}; expected "
            f"{', '.join(sorted(template))}"
        )
    for name, mine in template.items():
        check_optimizer_state(saved[name], mine, where, f"{key}.{name}")


def held_optimizers(method: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers a method holds as attributes (what its checkpoints restore)."""
    return [v for v in vars(method).values() if isinstance(v, torch.optim.Optimizer)]


_ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}


def check_loaded_optimizers(optimizers: Iterable[torch.optim.Optimizer], where: Path) -> None:
    """After loading: every parameter's state has the optimizer's keys, finite step counters
    and moments of the parameter's shape (a wrong one would fail at the first step)."""
    for opt in optimizers:
        kind = type(opt).__name__
        params = [p for group in opt.param_groups for p in group["params"]]
        states = [opt.state.get(p) for p in params]
        if not any(states):
            continue
        expected = None
        if isinstance(opt, torch.optim.Adam | torch.optim.SparseAdam):
            amsgrad = any(g.get("amsgrad") for g in opt.param_groups)
            expected = _ADAM_STATE | ({"max_exp_avg_sq"} if amsgrad else set())
        for i, (p, state) in enumerate(zip(params, states, strict=True)):
            if not state:
                raise CheckpointError(
                    f"{where}: key 'optimizer': the {kind} has no state for parameter {i} but "
                    "has one for others"
                )
            keys = set(state)
            expected = expected if expected is not None else keys
            if keys != expected:
                raise CheckpointError(
                    f"{where}: key 'optimizer': the {kind}'s state of parameter {i} has "
                    f"{sorted(keys)}; expected {sorted(expected)}"
                )
            for name, value in state.items():
                if name == "step":
                    step = value.item() if isinstance(value, torch.Tensor) else value
                    ok = not isinstance(value, torch.Tensor) or value.numel() == 1
                    if not (ok and is_number(step) and 0 <= step <= MAX_STEP):
                        raise CheckpointError(
                            f"{where}: key 'optimizer': the {kind}'s step of parameter {i} is "
                            f"{show(step)}; expected a count from 0 to {MAX_STEP}"
                        )
                elif not (isinstance(value, torch.Tensor) and value.shape == p.shape):
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else value
                    raise CheckpointError(
                        f"{where}: key 'optimizer': the {kind}'s {name} of parameter {i} is "
                        f"{show(shape)}; expected a tensor of shape {tuple(p.shape)}"
                    )


# -- the configuration a checkpoint was trained with ---------------------------------------------


def config_differences(a: Config, b: Config, ignore: Iterable[str] = ()) -> list[str]:
    """The dotted keys whose values differ between ``a`` and ``b``, but those in ``ignore``."""
    skip = set(ignore)
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}.{k}" if prefix else k)
        elif prefix not in skip and x != y:
            out.append(prefix)

    walk(a.to_dict(), b.to_dict(), "")
    return out


def _value_at(config: Config, key: str) -> Any:
    node: Any = config.to_dict()
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_trained_with(config: Config, source: Path, saved: Config, checkpoint: Path) -> None:
    """Refuse a run configuration (``source``, a run's config.json) that differs from the one
    its checkpoint was trained with (``saved``) beyond :data:`dgm.config.RESUME_KEYS`."""
    differ = config_differences(config, saved, RESUME_KEYS)
    if differ:
        key = differ[0]
        raise CheckpointError(
            f"{source}: key '{key}' is {show(_value_at(config, key))}, but {checkpoint} was "
            f"trained with {show(_value_at(saved, key))}; only {', '.join(RESUME_KEYS)} may "
            "change in a run (restore config.json, or train a new run)"
        )
