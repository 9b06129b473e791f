"""``dgm eval``: the test ELBO and the importance-sampled log-likelihood of a run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import dgm.counts as counts
import dgm.families as families
import dgm.manifest as manifest
import dgm.sizes as sizes
from dgm.api import load_run
from dgm.cli.common import check_memory, check_seed_and_device, count, output_dir, pm, run_config
from dgm.errors import UsageError
from dgm.evaluate import DEFAULT_PAIRS_PER_PASS


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="test ELBO and importance-sampled log-likelihood of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--method",
        choices=("is", "ais", "bdmc", "bound"),
        default=None,
        help="is: importance sampling from q (a VAE's default); ais: annealed importance "
        "sampling (from the prior with HMC; an RBM's log Z from its base rate by Gibbs: the "
        "RBM's and the GAN's default); bdmc: AIS's lower and reverse AIS's upper bound on "
        "simulated data; bound: a diffusion model's ELBO (its default)",
    )
    p.add_argument(
        "--k",
        type=count,
        default=None,
        help="is: importance samples per example (5000); bound: time steps per example, the "
        "decoder's and one per stratum of the rest (100; the chain's length T: every step)",
    )
    p.add_argument(
        "--steps",
        type=count,
        default=None,
        help="ais, bdmc: intermediate distributions (1000; an RBM: rbm.temperatures)",
    )
    p.add_argument(
        "--chains",
        type=count,
        default=None,
        help="ais, bdmc: chains per example (16; an RBM: rbm.runs runs for log Z)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="a GAN's AIS: sigma of its observation model N(G(z), sigma^2 I) "
        "(gan.observation_scale)",
    )
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
    if args.k is not None and args.k < 1:
        raise UsageError(f"--k {args.k}: expected a positive number of importance samples")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number of test examples")
    if any(v is not None and v < 1 for v in (args.steps, args.chains, args.n)):
        raise UsageError("--steps, --chains and --n must be positive")
    run_dir = output_dir(args.run_dir)  # where what it measures is written
    config = run_config(args.run_dir)
    resolve_defaults(args, config)
    if args.method == "bound":
        return run_bound(args, run_dir)
    if args.method == "is":
        need = sizes.evaluation(config, args.k, DEFAULT_PAIRS_PER_PASS)
        check_memory(config, args.device, need, f"dgm eval --k {args.k}")
    elif args.method == "ais":
        check_memory(config, args.device, sizes.annealing(config, args.steps, args.chains), "AIS")
    else:
        need = sizes.annealing(config, args.steps, args.chains, min(args.n, 100))
        floats = 2 * args.n * (sizes.data_shape(config)[2] + sum(counts.latent_sizes(config)))
        need.add(f"{args.n:,} simulated examples", "--n", counts.FLOAT * floats)
        check_memory(config, args.device, need, "BDMC")
    run = load_run(args.run_dir, device=args.device)
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
    if run.family is not None:
        method = run.family.evaluation
        hint = f"use --method {method}" if method else "judge its samples with dgm score"
        raise UsageError(
            f"--method is: a '{config.model.kind}' run has no q(z | x) to sample from; {hint}"
        )
    n = run.data.x_test[: args.limit].shape[0]
    start = time.perf_counter()
    with tqdm(total=n, disable=args.json or args.quiet, desc=f"log p(x), k={args.k}") as bar:
        summary = run.evaluate(
            args.k, args.limit, args.seed, on_batch=lambda done: bar.update(done - bar.n)
        )
    summary["seconds"] = time.perf_counter() - start
    name = output_name(f"k{args.k}", n, args.seed, run.epoch)
    atomic_write_text(run_dir / name, json.dumps(summary, indent=2) + "\n")
    manifest.record(run_dir, run_dir / name)
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
    options = {} if args.scale is None else {"scale": args.scale}
    if args.method == "bdmc":
        summary = run.bdmc(args.n, args.steps, args.chains, args.seed, **options)
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
                **options,
            )
    summary["seconds"] = time.perf_counter() - start
    n = args.n if args.method == "bdmc" else run.data.x_test[: args.limit].shape[0]
    name = output_name(f"{args.method}-t{args.steps}-c{args.chains}", n, args.seed, run.epoch)
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
    elif "log_z" in summary:  # AIS for a partition function (an RBM)
        print(
            f"test log p(x)        {summary['log_likelihood']:.2f} "
            f"{pm(summary['log_likelihood_stderr'])} nats (AIS for log Z: {args.steps} "
            f"temperatures x {args.chains} runs, n = {summary['examples']})"
        )
        print(
            f"log Z                {summary['log_z']:.2f} {pm(summary['log_z_stderr'])} "
            f"(effective sample size {summary['effective_sample_size']:.1f} of {args.chains})"
        )
        print(f"time                 {summary['seconds']:.1f} s")
    else:
        scale = (
            f", sigma = {summary['observation_scale']}" if "observation_scale" in summary else ""
        )
        print(
            f"test log p(x)        {summary['log_likelihood']:.2f} "
            f"{pm(summary['log_likelihood_stderr'])} nats (AIS, {args.steps} steps x "
            f"{args.chains} chains, n = {summary['n']}, acceptance {summary['acceptance']:.2f}"
            f"{scale})"
        )
        print(f"time                 {summary['seconds']:.1f} s")
    return 0


def output_name(method: str, n: int, seed: int, epoch: int) -> str:
    """The file an evaluation is written to in the run directory: its method and settings, the
    number of examples, the seed and the checkpoint's epoch (eval-k5000-n10000-seed0-epoch20.json,
    as ``dgm score`` names its files), so that an evaluation on other examples, with other draws
    or of another epoch never replaces it."""
    return f"eval-{method}-n{n}-seed{seed}-epoch{epoch}.json"


def resolve_defaults(args: argparse.Namespace, config: Any) -> None:
    """Fill in --method, --k, --steps and --chains where not given, as the run's family says
    (a model without one: importance sampling from q)."""
    kind = config.model.kind
    family = families.family(kind)
    args.method = args.method or (family.evaluation if family else None) or "is"
    if args.method == "bound" and (family is None or "bound" not in family.provides):
        raise UsageError(f"--method bound is a diffusion model's ELBO; this run is a '{kind}'")
    if args.k is None:
        args.k = 100 if args.method == "bound" else 5000
    steps, chains = family.ais_settings(config) if family else (1000, 16)
    if args.steps is None:
        args.steps = steps
    if args.chains is None:
        args.chains = chains


def run_bound(args: argparse.Namespace, run_dir: Path) -> int:
    """A diffusion model's ELBO on the test set, in nats (the --k time steps' estimate)."""
    from tqdm.auto import tqdm

    from dgm.files import atomic_write_text

    run = load_run(args.run_dir, device=args.device)
    n = run.data.x_test[: args.limit].shape[0]
    start = time.perf_counter()
    with tqdm(total=n, disable=args.json or args.quiet, desc=f"ELBO, {args.k} steps") as bar:
        summary = run.evaluate(
            args.k, args.limit, args.seed, on_batch=lambda done: bar.update(done - bar.n)
        )
    summary["seconds"] = time.perf_counter() - start
    name = output_name(f"bound-k{summary['time_steps']}", n, args.seed, run.epoch)
    atomic_write_text(run_dir / name, json.dumps(summary, indent=2) + "\n")
    manifest.record(run_dir, run_dir / name)
    if args.json:
        print(json.dumps(summary))
    else:
        every = "every step" if summary["time_steps"] == summary["steps"] else "stratified"
        print(
            f"test ELBO            {summary['elbo']:.2f} {pm(summary['elbo_stderr'])} nats "
            f"(T = {summary['steps']}, {summary['time_steps']} time steps per example, {every}; "
            f"n = {summary['examples']})"
        )
        print(f"time                 {summary['seconds']:.1f} s")
    return 0
