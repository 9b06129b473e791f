"""``dgm train``: train a run from a config and flags, or resume one."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dgm.build import fitted_by_em
from dgm.cli.common import check_seed_and_device, pm
from dgm.config import RESUME_KEYS, Config, load_config, parse_value
from dgm.errors import UsageError, shorten
from dgm.registry import ESTIMATORS

# flag -> dotted config key (flags override the config file and --set)
TRAIN_FLAGS: dict[str, tuple[str, type | None, str]] = {
    "model": (
        "model.kind",
        str,
        "vae (variational Bayes), ae (plain autoencoder), ppca or gmm (exact EM), gan "
        "(adversarial), diffusion (DDPM), rbm (contrastive divergence), ebm (Langevin)",
    ),
    "objective": ("objective.bound", str, "elbo or iwae (Burda et al. 2015), with --k samples"),
    "estimator": (
        "objective.estimator",
        str,
        "the gradient estimator: " + ", ".join(ESTIMATORS) + " (see dgm.registry)",
    ),
    "posterior": (
        "model.posterior",
        str,
        "gaussian, a flow from the encoder (planar:L, radial:L, iaf:L, sylvester:L), or "
        "sivi:J (semi-implicit, J extra draws of its mixing distribution)",
    ),
    "free_bits": ("objective.free_bits", float, "nats per latent unit below which the KL is free"),
    "kl_warmup": ("objective.kl_warmup_epochs", float, "epochs of linear KL warm-up (0 to 1)"),
    "kl_warmup_steps": ("objective.kl_warmup_steps", int, "or optimizer steps of KL warm-up"),
    "baseline": (
        "objective.baseline",
        str,
        "score-baseline's control variate: auto, running, "
        "learned (NVIL) or loo (leave-one-out, K > 1)",
    ),
    "inference": ("inference.kind", str, "amortized (encoder) or local (per-datapoint q_n)"),
    "inner_steps": ("inference.inner_steps", int, "local: E-steps on the batch's q_n per M-step"),
    "components": ("model.components", int, "gmm: number of mixture components"),
    "covariance": ("model.covariance", str, "gmm: full or diag"),
    "dataset": ("data.dataset", str, "mnist (embedded) or fashion-mnist"),
    "data_dir": ("data.data_dir", str, "directory holding the dataset's IDX files"),
    "download": ("data.download", None, "fetch missing dataset files (checksums verified)"),
    "likelihood": (
        "model.likelihood",
        str,
        "bernoulli, gaussian (unit variance), gaussian-learned, gaussian-isotropic",
    ),
    "latent_dim": ("model.latent_dim", int, "size of z"),
    "hidden": ("model.hidden", None, "hidden widths of encoder and decoder, e.g. 200,200"),
    "activation": ("model.activation", str, "tanh, relu, elu, softplus, leaky_relu, gelu"),
    "epochs": ("train.epochs", int, "passes over the training set"),
    "batch_size": ("train.batch_size", int, "examples per step"),
    "lr": ("train.lr", float, "Adam learning rate"),
    "seed": ("train.seed", int, "random seed (same seed and settings, same numbers on CPU)"),
    "binarize": ("data.binarize", str, "dynamic, static or none"),
    "kl": ("objective.kl", str, "auto, analytic (closed form) or mc (Monte Carlo)"),
    "k": ("objective.k", int, "samples of z per example in the training bound"),
    "device": ("train.device", str, "auto, cpu, cuda, cuda:N"),
    "precision": ("train.precision", str, "float32, or bfloat16 for the training step's networks"),
    "compile": (
        "train.compile",
        None,
        "torch.compile the training step (forward, gradient and check as one graph) even for a "
        "short run (the default, auto, compiles runs of 5,000 steps or more)",
    ),
    "train_limit": ("data.train_limit", int, "use only the first N training examples"),
    "test_limit": ("data.test_limit", int, "use only the first N test examples"),
}


SWITCHES = {"download", "compile"}  # flags without a value


def parse_hidden(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(
            f"--hidden {shorten(text)}: expected comma-separated integers like 200,200"
        ) from None


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {shorten(item)}: expected key=value, e.g. --set train.lr=3e-4")
        out[key.strip()] = parse_value(value.strip())
    for flag, (key, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out[key] = parse_hidden(value) if flag == "hidden" else value
    return out


#: what each epoch's line shows, where the row has it: the bounds, then the families' losses
SHOWN = (
    "train_elbo",
    "test_elbo",
    "train_iwae",
    "test_iwae",
    "train_recon",
    "test_recon",
    "test_kl",
    "train_d_loss",
    "train_g_loss",
    "train_wasserstein",
    "train_simple",
    "train_reconstruction",
    "test_reconstruction",
    "train_free_energy_gap",
    "train_contrast",
    "test_energy",
    "test_buffer_energy",
)


def print_epoch(m: dict[str, Any]) -> None:
    parts = [f"epoch {m['epoch']:>3}"]
    for key in SHOWN:
        if key in m:
            parts.append(f"{key} {m[key]:.2f}")
    parts.append(f"{m['images_per_s']:.0f} img/s")
    print("  ".join(parts), flush=True)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a model (no arguments: the main job, a VAE on MNIST)",
        description="Train a model. With no arguments: a VAE on the embedded MNIST, a few minutes "
        "on 2 CPU cores, in a new directory under runs/. Flags override CONFIG and --set.",
    )
    p.add_argument("config", nargs="?", help="a TOML config file (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<time>-...)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--force", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="log every epoch to TensorBoard, in RUN_DIR/tensorboard (or --tensorboard-dir); "
        'needs pip install "dgm[tensorboard]"',
    )
    p.add_argument("--tensorboard-dir", metavar="DIR", help="where --tensorboard writes")
    defaults = Config()  # what `dgm train` with no config file takes
    for flag, (key, typ, help_text) in TRAIN_FLAGS.items():
        if flag in SWITCHES:  # present or absent
            p.add_argument(
                "--" + flag, action="store_true", default=None, help=f"{help_text} [{key}]"
            )
            continue
        p.add_argument(
            "--" + flag.replace("_", "-"),
            dest=flag,
            type=typ or str,
            default=None,
            help=f"{help_text} [{key}; default: {config_default(defaults, key)}]",
        )
    return p


def config_default(config: Config, key: str) -> str:
    """The value of the dotted ``key`` in ``config`` as a flag would spell it (a list: 200,200;
    a family's own default differs for some keys: see dgm.config.FAMILY_DEFAULTS)."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    import dgm.api as runs
    from dgm.train.distributed import shutdown
    from dgm.train.run import is_main_process

    check_seed_and_device(args, "train.device")
    values = overrides(args)
    if args.tensorboard_dir is not None and not args.tensorboard:
        raise UsageError("--tensorboard-dir DIR: add --tensorboard to log there")
    # a missing tensorboard stops before training
    callbacks = tensorboard(args.tensorboard_dir) if args.tensorboard else []
    main = is_main_process()  # under torchrun only rank 0 writes and prints
    start = time.perf_counter()

    def started(run_dir: Path) -> None:
        if main:
            print(f"run directory: {run_dir}", flush=True)

    if args.resume is not None:
        if args.config or args.out or args.force:
            raise UsageError(
                "--resume RUN_DIR takes the run's own config; drop CONFIG/--out/--force"
            )
        extra = {k: v for k, v in values.items() if k not in RESUME_KEYS}
        if extra:
            raise UsageError(
                "--resume: only --epochs, --lr, --compile and --device may change on resume, "
                f"not {', '.join(sorted(extra))}"
            )
        train, target = (
            runs.resume,
            {
                "path": args.resume,
                "epochs": values.get("train.epochs"),
                "compile": values.get("train.compile"),
                "device": values.get("train.device"),
                "lr": values.get("train.lr"),
            },
        )
    else:
        config = load_config(args.config, values)
        if fitted_by_em(config):
            if callbacks:
                raise UsageError(
                    f"--tensorboard: model.kind = '{config.model.kind}' is fitted by EM in one "
                    "go, with no epochs to log"
                )
            return train_classical(args, config)
        train, target = (
            runs.fit,
            {"config": config, "out": args.out, "force": args.force, "on_removed": removed},
        )
    finished = False
    try:
        result = train(
            **target,
            progress=not args.quiet and main,
            on_start=started,
            on_epoch=print_epoch,
            on_notice=(lambda line: print(line, flush=True)) if main else None,
            callbacks=callbacks,
            stop_on_signals=True,
        )
        finished = True
    finally:
        shutdown(wait=finished)  # every rank waits for rank 0's figures
    return report(result, start, main)


def tensorboard(directory: str | None) -> list[Any]:
    """--tensorboard: a TensorBoardLogger writing to ``directory`` (None: RUN_DIR/tensorboard).
    Under torchrun only rank 0 writes."""
    from dgm.callbacks.tensorboard import TensorBoardLogger

    return [TensorBoardLogger(directory)]


def removed(paths: list[Path]) -> None:
    """--force: say what of the old run was removed (only files dgm had written)."""
    root = Path(os.path.commonpath([p.parent for p in paths]))
    names = sorted(str(p.relative_to(root)) for p in paths)
    shown = shorten(", ".join(names), 400)
    print(f"--force: removed {len(paths)} file(s) of the old run in {root}: {shown}", flush=True)


def report(result: Any, start: float, main: bool) -> int:
    """The closing line (rank 0) and the exit code: 128 + the signal that stopped it early."""
    stopped = result.stop_signal
    if not main:
        return 128 + stopped if stopped is not None else 0
    if stopped is not None:
        name = signal.Signals(stopped).name
        print(
            f"dgm: stopped by {name} after epoch {result.epoch}; its checkpoint is written: "
            f"continue with dgm train --resume {result.path}",
            file=sys.stderr,
            flush=True,
        )
        return 128 + stopped
    print(
        f"done: {result.epoch} epochs in {time.perf_counter() - start:.1f} s; "
        f"samples in {result.path / 'samples.png'}",
        flush=True,
    )
    return 0


def train_classical(args: argparse.Namespace, config: Any) -> int:
    import dgm.api as runs

    def started(run_dir: Path) -> None:
        print(f"run directory: {run_dir} (written once the fit is done)", flush=True)

    def show(row: dict[str, Any]) -> None:
        if not args.quiet:
            print(
                f"EM iteration {row['iteration']:>3}  train log p(x) "
                f"{row['train_log_likelihood']:.2f}  ({row['time_s']:.0f} s)",
                flush=True,
            )

    result = runs.fit(
        config,
        out=args.out,
        force=args.force,
        on_start=started,
        on_epoch=show,
        on_removed=removed,
    )
    r = result.metrics[-1]
    print(
        f"test log p(x) {r['test_log_likelihood']:.2f} {pm(r['test_log_likelihood_stderr'])} "
        f"nats ({r['test_bits_per_dim']:.3f} bits/dim, exact, n = {r['n']}); "
        f"fitted in {r['fit_time_s']:.1f} s",
        flush=True,
    )
    return 0
