"""``dgm eval``: the test ELBO and the importance-sampled log-likelihood of a run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from dgm.cli.common import pm
from dgm.errors import UsageError
from dgm.runs import load_run


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="test ELBO and importance-sampled log-likelihood of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--k", type=int, default=5000, help="importance samples per example")
    p.add_argument("--limit", type=int, default=None, help="only the first N test examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="override the run's device")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from dgm.files import atomic_write_text

    if args.k < 1:
        raise UsageError(f"--k {args.k}: expected a positive number of importance samples")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number of test examples")
    run_dir = Path(args.run_dir)
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
