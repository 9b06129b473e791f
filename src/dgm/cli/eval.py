"""``dgm eval``: the test ELBO and the importance-sampled log-likelihood of a run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import dgm.manifest as manifest
import dgm.sizes as sizes
from dgm.api import load_run
from dgm.cli.common import check_memory, check_seed_and_device, count, pm, run_config
from dgm.errors import UsageError
from dgm.evaluate import DEFAULT_PAIRS_PER_PASS


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="test ELBO and importance-sampled log-likelihood of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--method",
        choices=("is", "ais", "bdmc"),
        default="is",
        help="is: importance sampling from q (default); ais: annealed importance sampling from "
        "the prior with HMC; bdmc: AIS's lower and reverse AIS's upper bound on simulated data",
    )
    p.add_argument("--k", type=count, default=5000, help="is: importance samples per example")
    p.add_argument(
        "--steps", type=count, default=1000, help="ais, bdmc: intermediate distributions"
    )
    p.add_argument("--chains", type=count, default=16, help="ais, bdmc: chains per example")
    p.add_argument("--n", type=count, default=100, help="bdmc: examples simulated from the model")
    p.add_argument("--limit", type=count, default=None, help="only the first N test examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="override the run's device")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from dgm.files import atomic_write_text

    check_seed_and_device(args)
    if args.k < 1:
        raise UsageError(f"--k {args.k}: expected a positive number of importance samples")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number of test examples")
    if args.steps < 1 or args.chains < 1 or args.n < 1:
        raise UsageError("--steps, --chains and --n must be positive")
    run_dir = Path(args.run_dir)
    config = run_config(run_dir)
    if args.method == "is":
        need = sizes.evaluation(config, args.k, DEFAULT_PAIRS_PER_PASS)
        check_memory(config, args.device, need, f"dgm eval --k {args.k}")
    elif args.method == "ais":
        check_memory(config, args.device, sizes.annealing(config, args.steps, args.chains), "AIS")
    else:
        need = sizes.annealing(config, args.steps, args.chains, min(args.n, 100))
        floats = 2 * args.n * (sizes.data_shape(config)[2] + sum(sizes.latent_sizes(config)))
        need.add(f"{args.n:,} simulated examples", "--n", sizes.FLOAT * floats)
        check_memory(config, args.device, need, "BDMC")
    run = load_run(run_dir, device=args.device)
    if run.exact:
        summary = run.evaluate(limit=args.limit)
        if args.json:
            print(json.dumps(summary))
        else:
            print(
                f"test log p(x)        {summary['test_log_likelihood']:.2f} "
                f"{pm(summary['test_log_likelihood_stderr'])} nats (exact, n = {summary['n']}), "
                f"{summary['test_bits_per_dim']:.3f} bits/dim"
            )
        return 0
    if args.method != "is":
        return run_ais(args, run, run_dir)
    n = run.data.x_test[: args.limit].shape[0]
    start = time.perf_counter()
    with tqdm(total=n, disable=args.json or args.quiet, desc=f"log p(x), k={args.k}") as bar:
        summary = run.evaluate(
            args.k, args.limit, args.seed, on_batch=lambda done: bar.update(done - bar.n)
        )
    summary["seconds"] = time.perf_counter() - start
    atomic_write_text(run_dir / f"eval-k{args.k}.json", json.dumps(summary, indent=2) + "\n")
    manifest.record(run_dir, run_dir / f"eval-k{args.k}.json")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"test ELBO            {summary['elbo']:.2f} {pm(summary['elbo_stderr'])} nats")
        print(
            f"test log p(x)        {summary['log_likelihood']:.2f} "
            f"{pm(summary['log_likelihood_stderr'])} nats (k = {args.k}, n = {summary['n']})"
        )
        layers = summary["active_units_per_layer"]
        per_layer = f" (per layer: {', '.join(map(str, layers))})" if len(layers) > 1 else ""
        print(
            f"active units         {summary['active_units']} of {summary['latent_units']}"
            f"{per_layer} (Var_x E_q[z_u] > 0.01)"
        )
        print(f"time                 {summary['seconds']:.1f} s")
    return 0


def run_ais(args: argparse.Namespace, run: Any, run_dir: Path) -> int:
    from tqdm.auto import tqdm

    from dgm.files import atomic_write_text

    start = time.perf_counter()
    if args.method == "bdmc":
        summary = run.bdmc(args.n, args.steps, args.chains, args.seed)
    else:
        n = run.data.x_test[: args.limit].shape[0]
        desc = f"AIS, {args.steps} steps x {args.chains} chains"
        with tqdm(total=n, disable=args.json or args.quiet, desc=desc) as bar:
            summary = run.evaluate_ais(
                args.steps,
                args.chains,
                args.limit,
                args.seed,
                on_batch=lambda d: bar.update(d - bar.n),
            )
    summary["seconds"] = time.perf_counter() - start
    name = f"eval-{args.method}-t{args.steps}-c{args.chains}.json"
    atomic_write_text(run_dir / name, json.dumps(summary, indent=2) + "\n")
    manifest.record(run_dir, run_dir / name)
    if args.json:
        print(json.dumps(summary))
    elif args.method == "bdmc":
        print(
            f"BDMC on {summary['n']} simulated examples, {args.steps} steps x {args.chains} chains:"
            f" lower {summary['lower']:.2f}, upper {summary['upper']:.2f}, gap "
            f"{summary['gap']:.2f} {pm(summary['gap_stderr'])} nats"
        )
    else:
        print(
            f"test log p(x)        {summary['log_likelihood']:.2f} "
            f"{pm(summary['log_likelihood_stderr'])} nats (AIS, {args.steps} steps x "
            f"{args.chains} chains, n = {summary['n']}, acceptance {summary['acceptance']:.2f})"
        )
        print(f"time                 {summary['seconds']:.1f} s")
    return 0
