"""``dgm gradvar``: the variance of every gradient estimator on one batch of a run (or of a
config's model at initialization)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import dgm.sizes as sizes
from dgm.api import initial_run, load_run
from dgm.cli.common import check_memory, check_seed_and_device, count, run_config
from dgm.config import load_config
from dgm.errors import UsageError, shorten
from dgm.files import atomic_write_text


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "gradvar",
        help="variance of the ELBO gradient, score function vs reparameterization",
        description="Draw R independent gradient estimates of the ELBO (and the IWAE bound) "
        "w.r.t. the encoder's (or the per-datapoint tables') parameters, on one batch of "
        "training data, for every registered estimator and each K; report the variance (trace "
        "of the covariance), ||E g||^2, the signal-to-noise ratio and the ratio to the "
        "reparameterization trick's variance.",
    )
    p.add_argument("target", metavar="RUN_DIR_or_CONFIG")
    p.add_argument("--epoch", type=count, default=None, help="a run's checkpoint (default: last)")
    p.add_argument("--k", default="1,10,100", help="samples per example to compare, e.g. 1,10")
    p.add_argument("--repeats", type=count, default=100, help="gradient draws R per estimator")
    p.add_argument("--batch-size", type=count, default=100, help="training examples in the batch")
    p.add_argument(
        "--baseline-steps", type=count, default=500, help="steps fitting the baselines first"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", help="where gradvar.json/png go for a CONFIG (a run: its directory)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _load(target: Path, device: str | None, epoch: int | None):  # noqa: ANN202
    """A trained run's latest (or ``epoch``'s) checkpoint, or a config's model at init."""
    if target.is_dir():
        checkpoint = None
        if epoch is not None:
            checkpoint = target / "checkpoints" / f"epoch-{epoch:04d}"
            if not checkpoint.is_dir():
                raise UsageError(
                    f"--epoch {epoch}: no checkpoint {checkpoint} (dgm keeps the last few)"
                )
        run = load_run(target, device=device, checkpoint=checkpoint)
        return run, f"{target} (epoch {run.epoch})"
    if target.suffix != ".toml":
        raise UsageError(f"{target}: expected a run directory or a TOML config file")
    if epoch is not None:
        raise UsageError(f"--epoch {epoch}: a config has no checkpoints (give a run directory)")
    return initial_run(target, device=device), f"{target} at initialization"


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from dgm.plots import save_gradvar

    check_seed_and_device(args)
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
    config = run_config(target) if target.is_dir() else None
    if config is None and target.suffix == ".toml":
        config = load_config(target)
    if config is not None:  # else _load says what it expected
        need = sizes.gradients(config, ks, args.batch_size)
        check_memory(config, args.device, need, f"dgm gradvar --k {shorten(args.k, 30)}")
    measured, what = _load(target, args.device, args.epoch)
    bars: dict[str, Any] = {}

    def fitting(name: str, step: int) -> None:
        bar = bars.get(name)
        if bar is None:
            desc = f"fit {name} baseline"
            bar = bars[name] = tqdm(total=args.baseline_steps, disable=args.json, desc=desc)
        bar.update(step - bar.n)

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

    try:
        summary = measured.gradient_variance(
            ks, args.repeats, args.batch_size, args.baseline_steps, args.seed, show, fitting
        )
    finally:
        for bar in bars.values():
            bar.close()
    summary = {"target": what, **summary}
    out_dir = target if target.is_dir() else Path(args.out or ".")
    stem = "gradvar" if args.epoch is None else f"gradvar-epoch{args.epoch}"
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
    save_gradvar(summary["results"], out_dir / f"{stem}.png", title=f"gradient variance: {what}")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.png')}")
    return 0
