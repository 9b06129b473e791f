"""Flow posteriors against the diagonal Gaussian at the same architecture, epochs and evaluation.

Every system is the standard MNIST model (784-200-200-50 tanh MLPs, Bernoulli likelihood, dynamic
binarization, batch 100, Adam 1e-3, K = 1 ELBO, seed 0); only q(z | x) differs: the diagonal
Gaussian (KL in closed form), or that Gaussian pushed through a flow whose parameters the encoder
computes from x (KL by Monte Carlo). Each is evaluated on the full test set with the same k
importance samples, and compared with the Gaussian example by example (paired standard errors).

    OMP_NUM_THREADS=1 python benchmarks/flows.py --epochs 50 --out runs/bench-flows  # ~1 hour
    python benchmarks/flows.py --epochs 1 --train-limit 1000 --test-limit 100 --k 10 --out /tmp/f

Runs are ordinary dgm run directories under --out; an interrupted benchmark resumes where it
stopped (the same command again); other settings need another --out. The summary goes to
OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dgm.config import load_config
from dgm.evaluate import importance_log_likelihood, mean_stderr
from dgm.files import atomic_write_text
from dgm.train.run import load_trained, read_metrics, train_or_resume

#: the posteriors compared; sivi:10 is semi-implicit (Yin and Zhou 2018) with J = 10 extra draws
#: of psi in training and its model's sivi_eval_draws (1000) in evaluation
SYSTEMS = ["gaussian", "planar:16", "radial:16", "iaf:4", "sylvester:4", "sivi:10"]


def evaluate(run_dir: Path, k: int, seed: int) -> dict:
    """log p(x) and the ELBO per test example (tensors), cached in the run directory."""
    cache = run_dir / f"flows-eval-k{k}.pt"
    if cache.exists():
        return torch.load(cache)
    trainer = load_trained(run_dir)
    torch.manual_seed(seed)
    start = time.perf_counter()
    model, posterior = trainer.model.eval(), trainer.posterior.eval()  # sivi: evaluation's J
    ll = importance_log_likelihood(model, posterior, trainer.data.x_test, k)
    out = {
        "log_px": ll.log_likelihood.double(),
        "elbo": ll.elbo.double(),
        "seconds": time.perf_counter() - start,
        "train_time_s": read_metrics(run_dir)[-1]["train_time_s"],
    }
    torch.save(out, cache)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--k", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-flows"))
    parser.add_argument("--only", nargs="*", help="run only these posteriors")
    args = parser.parse_args(argv)
    systems = [s for s in SYSTEMS if not args.only or s in args.only]
    results = {}
    for posterior in systems:
        overrides = {
            "model.posterior": posterior,
            "train.epochs": args.epochs,
            "train.device": "cpu",
            "data.train_limit": args.train_limit,
            "data.test_limit": args.test_limit,
        }
        overrides.update({"objective.k": 1, "objective.kl": "auto"})  # the flows: by MC
        config = load_config("configs/mnist_vae.toml", overrides)
        run_dir = args.out / posterior.replace(":", "-")
        print(f"{posterior} ...", flush=True)
        _, stopped = train_or_resume(
            config,
            run_dir,
            on_epoch=lambda m: print(
                f"  epoch {m['epoch']} test ELBO {m['test_elbo']:.2f}", flush=True
            ),
        )
        if stopped is not None:
            print(f"stopped by signal {stopped}; run the same command to resume")
            return 128 + stopped
        results[posterior] = evaluate(run_dir, args.k, seed=0)

    base = results.get("gaussian")
    summary = {"epochs": args.epochs, "k": args.k, "threads": torch.get_num_threads()}
    rows = {}
    for posterior, r in results.items():
        row = {}
        for key in ("log_px", "elbo"):
            row[key], row[f"{key}_stderr"] = mean_stderr(r[key])
            if base is not None and posterior != "gaussian":
                diff = r[key] - base[key]  # (N,): paired, the same test images
                row[f"{key}_minus_gaussian"], row[f"{key}_minus_gaussian_stderr"] = mean_stderr(
                    diff
                )
        row["train_time_s"] = r["train_time_s"]
        row["eval_seconds"] = r["seconds"]
        rows[posterior] = row
    summary["systems"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")

    print(f"\n{'posterior':<12} {'log p(x)':>9} {'vs gaussian':>16} {'ELBO':>9} {'train s':>8}")
    for posterior, row in rows.items():
        diff = row.get("log_px_minus_gaussian")
        vs = f"{diff:+.2f} ± {row['log_px_minus_gaussian_stderr']:.2f}" if diff is not None else ""
        print(
            f"{posterior:<12} {row['log_px']:>9.2f} {vs:>16} {row['elbo']:>9.2f} "
            f"{row['train_time_s']:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
