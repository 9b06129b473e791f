"""What the commands share: the standard-error remark, and the checks made before anything is
loaded: --seed, --device, counts that fit in 64 bits, and the memory a command needs."""

from __future__ import annotations

import argparse
from pathlib import Path

import dgm.export as export
from dgm.config import MAX_SEED, Config, load_run_config
from dgm.devices import resolve_device
from dgm.errors import UsageError, shorten
from dgm.sizes import Need, check


def pm(se: float | None) -> str:
    """'± 0.25' for a standard error, or a remark when there is none (a single example)."""
    return f"± {se:.2f}" if se is not None else "(one example: no standard error)"


def check_seed_and_device(args: argparse.Namespace, device_option: str = "--device") -> None:
    """One UsageError line for a ``--seed`` that torch cannot take or a ``--device`` that this
    machine does not have (:func:`dgm.devices.resolve_device`)."""
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < MAX_SEED:
        raise UsageError(f"--seed {shorten(seed)}: expected an integer 0 <= seed < 2**63")
    device = getattr(args, "device", None)
    if device is not None:
        resolve_device(device, device_option)


def count(text: str) -> int:
    """argparse type of a count: an integer that fits in 64 bits (a larger one is refused in
    one line: torch and the schedules take 64-bit integers)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {shorten(repr(text))}") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer below 2**63, got {shorten(text)}")
    return value


def check_memory(config: Config, device: str | None, need: Need, what: str) -> None:
    """Refuse (:func:`dgm.sizes.check`) what a command would compute, before the run is loaded,
    on ``--device`` (or the run's own device)."""
    option = "--device" if device is not None else "train.device"
    dev = resolve_device(device if device is not None else config.train.device, option)
    check(need, config, dev, what)


def run_config(run_dir: Path | str) -> Config:
    """The configuration of the run in ``run_dir`` (a run, an export or ``pretrained:NAME``;
    one ConfigError line if it is none of them)."""
    return load_run_config(export.resolve(run_dir) / "config.json")


def output_dir(run_dir: Path | str) -> Path:
    """Where a command writes what it measured of ``run_dir``: the run's own directory, or,
    for a model that ships with dgm (``pretrained:NAME``, inside the installed package),
    ``./pretrained-NAME`` in the current directory."""
    if export.is_pretrained(run_dir):
        return Path.cwd() / f"pretrained-{export.resolve(run_dir).name}"
    return Path(run_dir)


def add_steps_argument(p: argparse.ArgumentParser) -> None:
    """``--steps``: the sampler's steps, for ``dgm sample`` and ``dgm score``."""
    p.add_argument(
        "--steps",
        type=count,
        default=None,
        help="the sampler's steps: a diffusion model's DDIM steps (its chain's length T: "
        "ancestral; default diffusion.sampling_steps), an RBM's Gibbs sweeps "
        "(rbm.sampling_steps), an EBM's Langevin steps (ebm.sampling_steps)",
    )
