"""The ``dgm`` command line: the only place that parses arguments or prints."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dgm.errors import DGMError, UsageError

# flag -> dotted config key (flags override the config file and --set)
TRAIN_FLAGS: dict[str, tuple[str, type | None, str]] = {
    "model": ("model.kind", str, "vae (VB with an amortized encoder) or ae (plain autoencoder)"),
    "dataset": ("data.dataset", str, "mnist (embedded) or fashion-mnist"),
    "data_dir": ("data.data_dir", str, "directory holding the dataset's IDX files"),
    "download": ("data.download", None, "fetch missing dataset files (checksums verified)"),
    "likelihood": (
        "model.likelihood",
        str,
        "bernoulli, gaussian (unit variance), gaussian-learned",
    ),
    "latent_dim": ("model.latent_dim", int, "size of z"),
    "hidden": ("model.hidden", None, "hidden widths of encoder and decoder, e.g. 200,200"),
    "activation": ("model.activation", str, "tanh, relu, elu, softplus, leaky_relu, gelu"),
    "epochs": ("train.epochs", int, "passes over the training set"),
    "batch_size": ("train.batch_size", int, "examples per step"),
    "lr": ("train.lr", float, "Adam learning rate"),
    "seed": ("train.seed", int, "random seed (same seed and settings, same numbers on CPU)"),
    "binarize": ("data.binarize", str, "dynamic, static or none"),
    "kl": ("objective.kl", str, "analytic (closed form) or mc (Monte Carlo)"),
    "k": ("objective.k", int, "samples of z per example in the training ELBO"),
    "device": ("train.device", str, "auto, cpu, cuda, cuda:N"),
    "train_limit": ("data.train_limit", int, "use only the first N training examples"),
    "test_limit": ("data.test_limit", int, "use only the first N test examples"),
}


def _parse_hidden(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(
            f"--hidden {text}: expected comma-separated integers like 200,200"
        ) from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from dgm.config import parse_value

    out: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item}: expected key=value, e.g. --set train.lr=3e-4")
        out[key.strip()] = parse_value(value.strip())
    for flag, (key, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out[key] = _parse_hidden(value) if flag == "hidden" else value
    return out


def _print_epoch(m: dict[str, Any]) -> None:
    parts = [f"epoch {m['epoch']:>3}"]
    for key in ("train_elbo", "test_elbo", "train_log_lik", "test_log_lik", "test_kl"):
        if key in m:
            parts.append(f"{key} {m[key]:.2f}")
    parts.append(f"{m['images_per_s']:.0f} img/s")
    print("  ".join(parts), flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from dgm.config import load_config
    from dgm.train import Trainer
    from dgm.train.run import (
        check_new_run,
        default_run_dir,
        open_resume,
        prepare_new_run,
        train_run,
    )

    overrides = _overrides(args)
    if args.resume is not None:
        run_dir = Path(args.resume)
        if args.config or args.out or args.force:
            raise UsageError(
                "--resume RUN_DIR takes the run's own config; drop CONFIG/--out/--force"
            )
        extra = {k: v for k, v in overrides.items() if k != "train.epochs"}
        if extra:
            raise UsageError(
                f"--resume: only --epochs may change on resume, not {', '.join(sorted(extra))}"
            )
        config = open_resume(run_dir, overrides.get("train.epochs"))
        trainer = Trainer(config, run_dir)
    else:
        config = load_config(args.config, overrides)
        run_dir = Path(args.out) if args.out else default_run_dir(config)
        check_new_run(run_dir, force=args.force)
        trainer = Trainer(config, run_dir)  # device and dataset checked before anything is written
        prepare_new_run(config, run_dir, force=args.force)
    print(f"run directory: {run_dir}", flush=True)
    start = time.perf_counter()
    trainer = train_run(
        config,
        run_dir,
        resume=args.resume is not None,
        progress=not args.quiet,
        on_epoch=_print_epoch,
        trainer=trainer,
    )
    print(
        f"done: {trainer.epoch} epochs in {time.perf_counter() - start:.1f} s; "
        f"samples in {run_dir / 'samples.png'}",
        flush=True,
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from dgm.evaluate import importance_log_likelihood
    from dgm.train.files import atomic_write_text
    from dgm.train.run import load_trained

    if args.k < 1:
        raise UsageError(f"--k {args.k}: expected a positive number of importance samples")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number of test examples")
    run_dir = Path(args.run_dir)
    trainer = load_trained(run_dir, device=args.device, limit=args.limit)
    if trainer.config.model.kind != "vae":
        raise UsageError(f"{run_dir}: a plain autoencoder has no likelihood bound to evaluate")
    import torch

    torch.manual_seed(args.seed)
    x = trainer.data.x_test
    start = time.perf_counter()
    posterior = trainer.test_posterior(x)  # local inference: the E-step on the test set
    with tqdm(
        total=x.shape[0], disable=args.json or args.quiet, desc=f"log p(x), k={args.k}"
    ) as bar:
        result = importance_log_likelihood(
            trainer.model, posterior, x, args.k, on_batch=lambda n: bar.update(n - bar.n)
        )
    summary: dict[str, Any] = {**result.summary(), "epoch": trainer.epoch}
    summary["seconds"] = time.perf_counter() - start
    atomic_write_text(run_dir / f"eval-k{args.k}.json", json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"test ELBO            {summary['elbo']:.2f} ± {summary['elbo_stderr']:.2f} nats")
        print(
            f"test log p(x)        {summary['log_likelihood']:.2f} ± "
            f"{summary['log_likelihood_stderr']:.2f} nats (k = {args.k}, n = {summary['n']})"
        )
        print(f"time                 {summary['seconds']:.1f} s")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from dgm.plots import save_grid
    from dgm.train.run import load_trained

    if args.n < 1:
        raise UsageError(f"--n {args.n}: expected a positive number of samples")
    run_dir = Path(args.run_dir)
    trainer = load_trained(run_dir, device=args.device)
    torch.manual_seed(args.seed)
    with torch.inference_mode():
        _, p_x = trainer.model.eval().sample(args.n)
        out = Path(args.out) if args.out else run_dir / "samples.png"
        save_grid(p_x.mean, out, trainer.data.image_shape)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgm", description="Deep generative models trained by variational Bayes."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    for flag, (key, typ, help_text) in TRAIN_FLAGS.items():
        if flag == "download":
            p.add_argument(
                "--download", action="store_true", default=None, help=f"{help_text} [{key}]"
            )
            continue
        p.add_argument(
            "--" + flag.replace("_", "-"),
            dest=flag,
            type=typ or str,
            default=None,
            help=f"{help_text} [{key}]",
        )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test ELBO and importance-sampled log-likelihood of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--k", type=int, default=5000, help="importance samples per example")
    p.add_argument("--limit", type=int, default=None, help="only the first N test examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="override the run's device")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="draw x ~ p(x | z), z ~ p(z) from a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", metavar="FILE.png", help="output image (default RUN_DIR/samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DGMError as err:
        print(f"dgm: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file dgm had to read or write: name it, no traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"dgm: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dgm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
