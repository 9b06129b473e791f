"""``dgm gap``: the approximation and amortization gaps of a run on test data."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import dgm.manifest as manifest
from dgm.api import load_run
from dgm.cli.common import check_seed_and_device, count, output_dir, pm
from dgm.errors import UsageError
from dgm.files import atomic_write_text


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "gap",
        help="approximation and amortization gaps on test data",
        description="log p(x) (importance-sampled), the ELBO with the encoder's q, and the ELBO "
        "after optimizing a q per test example from the encoder's (Cremer et al. 2018).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--k", type=count, default=5000, help="importance samples for log p(x)")
    p.add_argument("--steps", type=count, default=500, help="Adam steps per test example's q")
    p.add_argument("--lr", type=float, default=0.05, help="their learning rate (cosine-annealed)")
    p.add_argument("--elbo-samples", type=count, default=1000, help="samples for each ELBO")
    p.add_argument("--limit", type=count, default=None, help="only the first N test examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from dgm.plots import save_gap

    check_seed_and_device(args)
    if args.k < 1 or args.steps < 1 or args.elbo_samples < 1 or not args.lr > 0:
        raise UsageError("--k, --steps, --elbo-samples and --lr must be positive")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number of test examples")
    run_dir = output_dir(args.run_dir)  # where what it measures is written
    run_ = load_run(args.run_dir, device=args.device)
    n = run_.data.x_test[: args.limit].shape[0]
    bars: dict[str, Any] = {}

    def on_batch(stage: str, done: int) -> None:  # one bar per stage, examples done of n
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(total=n, desc=stage, disable=args.json or args.quiet)
        bars[stage].update(done - bars[stage].n)

    start = time.perf_counter()
    try:
        result = run_.gaps(
            k=args.k,
            limit=args.limit,
            seed=args.seed,
            steps=args.steps,
            lr=args.lr,
            elbo_samples=args.elbo_samples,
            on_batch=on_batch,
        )
    finally:
        for bar in bars.values():
            bar.close()
    result["seconds"] = time.perf_counter() - start
    atomic_write_text(run_dir / "gap.json", json.dumps(result, indent=2) + "\n")
    save_gap(result, run_dir / "gap.png")
    manifest.record(run_dir, run_dir / "gap.json", run_dir / "gap.png")
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("log_likelihood", "elbo_optimized", "elbo_amortized"):
            print(f"{key:<20} {result[key]:8.2f} {pm(result[key + '_stderr'])} nats")
        for key in ("approximation_gap", "amortization_gap"):
            print(f"{key:<20} {result[key]:8.2f} {pm(result[key + '_stderr'])} nats")
        print(f"n = {result['n']}, k = {args.k}, {args.steps} steps; {result['seconds']:.0f} s")
    return 0
