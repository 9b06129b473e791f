"""The ``dgm`` command line: the only place that parses arguments or prints."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dgm.config import CLASSICAL
from dgm.errors import DGMError, UsageError
from dgm.registry import ESTIMATORS

# flag -> dotted config key (flags override the config file and --set)
TRAIN_FLAGS: dict[str, tuple[str, type | None, str]] = {
    "model": (
        "model.kind",
        str,
        "vae (variational Bayes), ae (plain autoencoder), ppca or gmm (exact EM)",
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
        "gaussian, or a flow from the encoder: planar:L, radial:L, iaf:L, sylvester:L",
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
        "torch.compile the training step (forward, gradient and check as one graph)",
    ),
    "train_limit": ("data.train_limit", int, "use only the first N training examples"),
    "test_limit": ("data.test_limit", int, "use only the first N test examples"),
}


SWITCHES = {"download", "compile"}  # flags without a value


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
    keys = ("train_elbo", "test_elbo", "train_iwae", "test_iwae", "train_log_lik", "test_log_lik")
    for key in (*keys, "test_kl"):
        if key in m:
            parts.append(f"{key} {m[key]:.2f}")
    parts.append(f"{m['images_per_s']:.0f} img/s")
    print("  ".join(parts), flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from dgm.config import RUNTIME_KEYS, load_config
    from dgm.files import run_lock
    from dgm.train import Trainer
    from dgm.train.run import (
        check_new_run,
        default_run_dir,
        is_main_process,
        open_resume,
        prepare_new_run,
    )

    overrides = _overrides(args)
    main = is_main_process()  # under torchrun only rank 0 writes and prints
    if args.resume is not None:
        run_dir = Path(args.resume)
        if args.config or args.out or args.force:
            raise UsageError(
                "--resume RUN_DIR takes the run's own config; drop CONFIG/--out/--force"
            )
        allowed = ("train.epochs", *RUNTIME_KEYS)
        extra = {k: v for k, v in overrides.items() if k not in allowed}
        if extra:
            raise UsageError(
                "--resume: only --epochs, --compile and --device may change on resume, not "
                f"{', '.join(sorted(extra))}"
            )
        with run_lock(run_dir, create=False) if main else nullcontext():
            config = open_resume(run_dir, overrides.get("train.epochs"))
            for key in RUNTIME_KEYS:  # how the run computes from here on
                if key in overrides:
                    section, name = key.split(".")
                    setattr(getattr(config, section), name, overrides[key])
            trainer = Trainer(config, run_dir)
            return _train_and_report(config, run_dir, trainer, args)
    config = load_config(args.config, overrides)
    if config.model.kind in CLASSICAL:
        return _train_classical(args, config)
    if not args.out and not main:
        raise UsageError("torchrun: give the run directory with --out (every rank needs it)")
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    if main:
        check_new_run(run_dir, force=args.force)
    trainer = Trainer(config, run_dir)  # device and dataset checked before anything is written
    if not main:  # distributed: rank 0 creates the run directory; the others only train
        return _train_and_report(config, run_dir, trainer, args)
    with run_lock(run_dir):  # from here no other process creates, replaces or trains it
        check_new_run(run_dir, force=args.force)  # again: another may have started meanwhile
        prepare_new_run(config, run_dir, force=args.force)
        return _train_and_report(config, run_dir, trainer, args)


def _train_and_report(config: Any, run_dir: Path, trainer: Any, args: argparse.Namespace) -> int:
    from dgm.train.distributed import shutdown
    from dgm.train.run import train_run

    main = trainer.dist.is_main
    if main:
        print(f"run directory: {run_dir}", flush=True)
    start = time.perf_counter()
    finished = False
    try:
        trainer = train_run(
            config,
            run_dir,
            resume=args.resume is not None,
            progress=not args.quiet and main,
            on_epoch=_print_epoch,
            trainer=trainer,
            stop_on_signals=True,
        )
        finished = True
    finally:
        shutdown(wait=finished)  # every rank waits for rank 0's figures
    if not main:
        return 128 + trainer.stop_signal if trainer.stop_signal is not None else 0
    if trainer.stop_signal is not None:
        import signal

        name = signal.Signals(trainer.stop_signal).name
        print(
            f"dgm: stopped by {name} after epoch {trainer.epoch}; its checkpoint is written: "
            f"continue with dgm train --resume {run_dir}",
            file=sys.stderr,
            flush=True,
        )
        return 128 + trainer.stop_signal
    print(
        f"done: {trainer.epoch} epochs in {time.perf_counter() - start:.1f} s; "
        f"samples in {run_dir / 'samples.png'}",
        flush=True,
    )
    return 0


def _run_kind(run_dir: Path) -> str:
    """model.kind of the run in ``run_dir`` (a one-line error if it is not a run)."""
    from dgm.config import load_run_config

    return load_run_config(run_dir / "config.json").model.kind


def _train_classical(args: argparse.Namespace, config: Any) -> int:
    from dgm.train.classical import run_classical
    from dgm.train.run import check_new_run, default_run_dir

    run_dir = Path(args.out) if args.out else default_run_dir(config)
    check_new_run(run_dir, force=args.force)
    print(f"run directory: {run_dir} (written once the fit is done)", flush=True)

    def show(row: dict[str, Any]) -> None:
        if not args.quiet:
            print(
                f"EM iteration {row['iteration']:>3}  train log p(x) "
                f"{row['train_log_likelihood']:.2f}  ({row['time_s']:.0f} s)",
                flush=True,
            )

    r = run_classical(config, run_dir, on_iter=show, force=args.force)
    print(
        f"test log p(x) {r['test_log_likelihood']:.2f} {_pm(r['test_log_likelihood_stderr'])} "
        f"nats ({r['test_bits_per_dim']:.3f} bits/dim, exact, n = {r['n']}); "
        f"fitted in {r['fit_time_s']:.1f} s",
        flush=True,
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from dgm.files import atomic_write_text
    from dgm.runs import load_run

    if args.k < 1:
        raise UsageError(f"--k {args.k}: expected a positive number of importance samples")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number of test examples")
    run_dir = Path(args.run_dir)
    run = load_run(run_dir, device=args.device)
    if run.kind in CLASSICAL:
        summary = run.evaluate(limit=args.limit)
        if args.json:
            print(json.dumps(summary))
        else:
            print(
                f"test log p(x)        {summary['test_log_likelihood']:.2f} "
                f"{_pm(summary['test_log_likelihood_stderr'])} nats (exact, n = {summary['n']}), "
                f"{summary['test_bits_per_dim']:.3f} bits/dim"
            )
        return 0
    if run.kind != "vae":
        raise UsageError(f"{run_dir}: a plain autoencoder has no likelihood bound to evaluate")
    n = run.data.x_test[: args.limit].shape[0]
    start = time.perf_counter()
    with tqdm(total=n, disable=args.json or args.quiet, desc=f"log p(x), k={args.k}") as bar:
        summary = run.evaluate(
            args.k, args.limit, args.seed, on_batch=lambda done: bar.update(done - bar.n)
        )
    summary["seconds"] = time.perf_counter() - start
    atomic_write_text(run_dir / f"eval-k{args.k}.json", json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"test ELBO            {summary['elbo']:.2f} {_pm(summary['elbo_stderr'])} nats")
        print(
            f"test log p(x)        {summary['log_likelihood']:.2f} "
            f"{_pm(summary['log_likelihood_stderr'])} nats (k = {args.k}, n = {summary['n']})"
        )
        layers = summary["active_units_per_layer"]
        per_layer = f" (per layer: {', '.join(map(str, layers))})" if len(layers) > 1 else ""
        print(
            f"active units         {summary['active_units']} of {summary['latent_units']}"
            f"{per_layer} (Var_x E_q[z_u] > 0.01)"
        )
        print(f"time                 {summary['seconds']:.1f} s")
    return 0


def _pm(se: float | None) -> str:
    """'± 0.25' for a standard error, or a remark when there is none (a single example)."""
    return f"± {se:.2f}" if se is not None else "(one example: no standard error)"


def _require_diagonal_gaussian(config: Any, where: Path, what: str) -> None:
    """gradvar and gap measure a single-layer diagonal-Gaussian q (the lecture's family)."""
    if config.model.posterior != "gaussian" or config.model.upper:
        family = (
            f"posterior '{config.model.posterior}'"
            if config.model.posterior != "gaussian"
            else f"{1 + len(config.model.upper)} stochastic layers"
        )
        raise UsageError(
            f"{where}: {what} is measured for one stochastic layer with a diagonal-Gaussian q; "
            f"this run has {family}"
        )


def _load_for_measurement(target: Path, device: str | None, epoch: int | None = None):
    """A trained run's latest (or ``epoch``'s) checkpoint, or (a TOML config) the model at
    initialization."""
    from dgm.config import load_config
    from dgm.train import Trainer
    from dgm.train.run import load_trained

    if target.is_dir():
        kind = _run_kind(target)
        if kind != "vae":
            raise UsageError(f"{target}: a '{kind}' run has no variational posterior to measure")
        trainer = load_trained(target, device=device)
        _require_diagonal_gaussian(trainer.config, target, "gradient variance")
        if epoch is not None:
            path = target / "checkpoints" / f"epoch-{epoch:04d}"
            if not path.is_dir():
                raise UsageError(f"--epoch {epoch}: no checkpoint {path} (dgm keeps the last few)")
            trainer.restore(path, weights_only=True)
        return trainer, f"{target} (epoch {{epoch}})"
    if target.suffix != ".toml":
        raise UsageError(f"{target}: expected a run directory or a TOML config file")
    if epoch is not None:
        raise UsageError(f"--epoch {epoch}: a config has no checkpoints (give a run directory)")
    config = load_config(target, {"train.device": device} if device else None)
    if config.model.kind != "vae":
        raise UsageError(f"{target}: model.kind must be 'vae' to measure gradient estimators")
    _require_diagonal_gaussian(config, target, "gradient variance")
    return Trainer(config, Path("unused")), f"{target} at initialization"


def cmd_gradvar(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from dgm.build import build_baseline
    from dgm.data import binarize_fixed, dequantize_fixed
    from dgm.estimators import ScoreFunction
    from dgm.files import atomic_write_text
    from dgm.gradvar import compare_estimators, warm_up_baseline
    from dgm.plots import save_gradvar

    try:
        ks = [int(v) for v in args.k.split(",") if v.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise UsageError(f"--k {args.k}: expected comma-separated positive integers like 1,10,100")
    if args.repeats < 20:
        raise UsageError(f"--repeats {args.repeats}: expected at least 20 gradient draws")
    if args.batch_size < 1 or args.baseline_steps < 0:
        raise UsageError("--batch-size must be positive and --baseline-steps non-negative")
    target = Path(args.target)
    trainer, what = _load_for_measurement(target, args.device, args.epoch)
    what = what.format(epoch=trainer.epoch)
    config = trainer.config
    torch.manual_seed(args.seed)
    n = min(args.batch_size, trainer.data.x_train.shape[0])
    index = torch.arange(n, device=trainer.device)
    x = trainer.data.x_train[:n]
    if config.data.binarize != "none":
        x = binarize_fixed(x, args.seed)
    elif config.data.dequantize:
        x = dequantize_fixed(x, args.seed)
    model, posterior = trainer.model.eval(), trainer.posterior.eval()
    full_posterior = posterior  # what the baselines are fitted with, on training batches
    if trainer.local:  # only the batch's rows get a gradient: measure on a copy of those rows
        from dgm.variational import LocalGaussian

        rows = LocalGaussian(n, posterior.latent_dim, sparse=False).to(trainer.device)
        with torch.no_grad():
            rows.lam.copy_(posterior.lam[index])
            rows.log_eta.copy_(posterior.log_eta[index])
        posterior = rows.eval()
    data_dim = x.shape[1]
    baselines = {}
    for name in ("running", "learned"):
        oc = config.objective.model_copy(update={"baseline": name, "k": 1})
        baseline = build_baseline(oc, data_dim).to(trainer.device)
        estimator = ScoreFunction(k=1, baseline=baseline)
        with tqdm(total=args.baseline_steps, disable=args.json, desc=f"fit {name} baseline") as b:
            warm_up_baseline(
                estimator, model, full_posterior, trainer.batches, args.baseline_steps,
                on_step=lambda s, b=b: b.update(s - b.n),
            )  # fmt: skip
        baselines[name] = baseline.eval()

    def show(r: dict[str, Any]) -> None:
        if not args.json:
            name = r["estimator"] + (f" + {r['baseline']}" if r["baseline"] else "")
            name += f" ({r['bound']})"
            ratio = r["variance_ratio_to_reparam"]
            vs_iwae = r.get("variance_ratio_to_iwae")
            print(
                f"K={r['k']:<4} {name:<30} variance {r['variance']:.4g} "
                f"(± {r['variance_se']:.2g})  ||E g||^2 {r['mean_sq_norm']:.3g}  "
                f"SNR {r['snr']:.3g}  x reparam {ratio:.3g}"
                + (f"  x iwae {vs_iwae:.3g}" if vs_iwae is not None else ""),
                flush=True,
            )

    records = compare_estimators(
        model, posterior, x, index, baselines, ks=ks, repeats=args.repeats, on_record=show
    )
    out_dir = target if target.is_dir() else Path(args.out or ".")
    stem = "gradvar" if args.epoch is None else f"gradvar-epoch{args.epoch}"
    summary = {
        "target": what,
        "parameters": "per-datapoint tables" if trainer.local else "encoder",
        "batch_size": n,
        "repeats": args.repeats,
        "baseline_steps": args.baseline_steps,
        "results": records,
    }
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
    save_gradvar(records, out_dir / f"{stem}.png", title=f"gradient variance: {what}")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.png')}")
    return 0


def cmd_gap(args: argparse.Namespace) -> int:
    import torch

    from dgm.evaluate import inference_gaps
    from dgm.files import atomic_write_text
    from dgm.plots import save_gap
    from dgm.train.run import load_trained

    if args.k < 1 or args.steps < 1 or args.elbo_samples < 1 or not args.lr > 0:
        raise UsageError("--k, --steps, --elbo-samples and --lr must be positive")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number of test examples")
    run_dir = Path(args.run_dir)
    kind = _run_kind(run_dir)
    if kind != "vae":
        raise UsageError(f"{run_dir}: a '{kind}' run has no encoder whose gaps could be measured")
    trainer = load_trained(run_dir, device=args.device, limit=args.limit)
    _require_diagonal_gaussian(trainer.config, run_dir, "the amortization gap")
    if trainer.local:
        raise UsageError(
            f"{run_dir}: the amortization gap needs a VAE with an encoder (inference.kind = "
            "'amortized')"
        )
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    result = inference_gaps(
        trainer.model,
        trainer.posterior,
        trainer.data.x_test,
        k=args.k,
        steps=args.steps,
        lr=args.lr,
        elbo_samples=args.elbo_samples,
        on_stage=None if args.json else (lambda s: print(f"... {s}", flush=True)),
    )
    result["epoch"] = trainer.epoch
    result["seconds"] = time.perf_counter() - start
    atomic_write_text(run_dir / "gap.json", json.dumps(result, indent=2) + "\n")
    save_gap(result, run_dir / "gap.png")
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("log_likelihood", "elbo_optimized", "elbo_amortized"):
            print(f"{key:<20} {result[key]:8.2f} {_pm(result[key + '_stderr'])} nats")
        for key in ("approximation_gap", "amortization_gap"):
            print(f"{key:<20} {result[key]:8.2f} {_pm(result[key + '_stderr'])} nats")
        print(f"n = {result['n']}, k = {args.k}, {args.steps} steps; {result['seconds']:.0f} s")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from dgm.plots import save_grid
    from dgm.runs import load_run

    if args.n < 1:
        raise UsageError(f"--n {args.n}: expected a positive number of samples")
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "samples.png"
    run = load_run(run_dir, device=args.device)
    save_grid(run.sample(args.n, seed=args.seed), out, run.data.image_shape)
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

    p = sub.add_parser(
        "gradvar",
        help="variance of the ELBO gradient, score function vs reparameterization",
        description="Draw R independent gradient estimates of the ELBO w.r.t. the encoder's "
        "(or the per-datapoint tables') parameters, on one batch of training data, for each "
        "estimator and K; report the variance (trace of the covariance), ||E g||^2, the "
        "signal-to-noise ratio and the ratio to the reparameterization trick's variance.",
    )
    p.add_argument("target", metavar="RUN_DIR_or_CONFIG")
    p.add_argument("--epoch", type=int, default=None, help="a run's checkpoint (default: last)")
    p.add_argument("--k", default="1,10,100", help="samples per example to compare, e.g. 1,10")
    p.add_argument("--repeats", type=int, default=100, help="gradient draws R per estimator")
    p.add_argument("--batch-size", type=int, default=100, help="training examples in the batch")
    p.add_argument(
        "--baseline-steps", type=int, default=500, help="steps fitting the baselines first"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", help="where gradvar.json/png go for a CONFIG (a run: its directory)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_gradvar)

    p = sub.add_parser(
        "gap",
        help="approximation and amortization gaps on test data",
        description="log p(x) (importance-sampled), the ELBO with the encoder's q, and the ELBO "
        "after optimizing a q per test example from the encoder's (Cremer et al. 2018).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--k", type=int, default=5000, help="importance samples for log p(x)")
    p.add_argument("--steps", type=int, default=500, help="Adam steps per test example's q")
    p.add_argument("--lr", type=float, default=0.05, help="their learning rate (cosine-annealed)")
    p.add_argument("--elbo-samples", type=int, default=1000, help="samples for each ELBO")
    p.add_argument("--limit", type=int, default=None, help="only the first N test examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_gap)

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
    code = _run(args)
    distributed = sys.modules.get("dgm.train.distributed")  # imported only by training
    if distributed is not None:  # a torchrun worker ends here: see its end_process
        distributed.end_process(code)
    return code


def _run(args: argparse.Namespace) -> int:
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
