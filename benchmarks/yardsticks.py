"""Both yardsticks for the repository's MNIST models: sample quality and ln p(x) by IS and AIS.

Trains (or resumes, or finds finished) three runs of ``configs/mnist_vae.toml``, which differ only
in the bound or the posterior: the standard VAE (K = 5 ELBO), IWAE with k = 5, and an IAF
posterior of 4 steps. For each it measures

- sample quality, as ``dgm score --n N`` does (:meth:`dgm.Run.score`), beside the floor (binarized
  training images) and the ceiling (independent pixels with the training mean);
- ln p(x) on the full test set by importance sampling from q with k = 5000 (Burda et al. 2015);
- ln p(x) on the first ``--ais-limit`` test images by annealed importance sampling from the prior
  (HMC, sigmoid schedule; Wu et al. 2017), with the IS estimate on the same images and the paired
  difference AIS - IS with its standard error: AIS should not be below IS beyond that error.

The ceiling's ln p(x) is exact: the test images' log-probability under independent Bernoulli
pixels with the training mean. Per-example estimates are cached in each run directory, so an
interrupted benchmark resumes (the same command again). The summary goes to OUT/summary.json and
a Markdown table to stdout.

    OMP_NUM_THREADS=1 python benchmarks/yardsticks.py --out runs/yardsticks     # ~2 hours
    python benchmarks/yardsticks.py --epochs 1 --k 10 --n 200 --ais-limit 5 --ais-steps 20 \
        --out /tmp/y                                                          # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import dgm
from dgm.ais import ais_log_likelihood
from dgm.config import load_config
from dgm.evaluate import importance_log_likelihood, mean_stderr
from dgm.files import atomic_write_text
from dgm.train.run import train_or_resume

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "mnist_vae.toml"
#: name -> (label, overrides of configs/mnist_vae.toml)
SYSTEMS = {
    "vae": ("VAE (ELBO, K = 5)", {}),
    "iwae_k5": ("IWAE (k = 5)", {"objective.bound": "iwae"}),
    "iaf4": ("VAE, IAF posterior (4 steps)", {"model.posterior": "iaf:4"}),
}
SCORE_KEYS = ("fid", "kid", "kid_stderr", "precision", "recall", "c2st_accuracy", "label_entropy")


def cached(path: Path, compute: Any) -> Any:
    """``compute()``, saved to ``path`` (torch.save of tensors and numbers) and read back next
    time."""
    if path.exists():
        return torch.load(path)
    value = compute()
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def measure(run: dgm.Run, args: argparse.Namespace) -> dict[str, Any]:
    d = run.path
    torch.manual_seed(args.seed)
    x = run.data.x_test

    def is_full() -> dict[str, Any]:
        t0 = time.perf_counter()
        r = importance_log_likelihood(run.model.eval(), run.posterior.eval(), x, args.k)
        return {"log_likelihood": r.log_likelihood, "elbo": r.elbo, "s": time.perf_counter() - t0}

    def ais() -> dict[str, Any]:
        t0 = time.perf_counter()
        xs = x[: args.ais_limit]
        parts, acc = [], 0.0
        for start in range(0, len(xs), 100):
            r = ais_log_likelihood(
                run.model.eval(), xs[start : start + 100], args.ais_steps, args.ais_chains
            )
            parts.append(r.log_likelihood)
            acc += r.acceptance * r.log_likelihood.numel()
        return {
            "log_likelihood": torch.cat(parts),
            "acceptance": acc / len(xs),
            "s": time.perf_counter() - t0,
        }

    def scored() -> dict[str, Any]:
        t0 = time.perf_counter()
        summary = run.score(args.n, seed=args.seed).summary()
        return {**summary, "s": time.perf_counter() - t0}

    with torch.no_grad():
        imp = cached(d / f"yardsticks-is-k{args.k}-n{len(x)}.pt", is_full)
        aisr = cached(
            d / f"yardsticks-ais-{args.ais_steps}x{args.ais_chains}-n{args.ais_limit}.pt", ais
        )
    score = cached(d / f"yardsticks-score-n{args.n}.pt", scored)
    ll, ll_se = mean_stderr(imp["log_likelihood"])
    elbo, elbo_se = mean_stderr(imp["elbo"])
    sub = imp["log_likelihood"][: args.ais_limit]
    a, a_se = mean_stderr(aisr["log_likelihood"])
    i, i_se = mean_stderr(sub)
    diff, diff_se = mean_stderr(aisr["log_likelihood"] - sub)
    return {
        "epoch": run.epoch,
        "score": {key: score[key] for key in SCORE_KEYS},
        "score_s": score["s"],
        "floor": {key: score["floor"][key] for key in SCORE_KEYS},
        "ceiling": {key: score["ceiling"][key] for key in SCORE_KEYS},
        "is": {
            "log_likelihood": ll,
            "stderr": ll_se,
            "elbo": elbo,
            "elbo_stderr": elbo_se,
            "k": args.k,
            "n": len(x),
            "s": imp["s"],
        },
        "ais": {
            "log_likelihood": a,
            "stderr": a_se,
            "n": args.ais_limit,
            "steps": args.ais_steps,
            "chains": args.ais_chains,
            "acceptance": aisr["acceptance"],
            "s": aisr["s"],
            "is_same_images": i,
            "is_same_images_stderr": i_se,
            "minus_is": diff,
            "minus_is_stderr": diff_se,
        },
    }


def independent_pixels_log_likelihood(run: dgm.Run) -> float:
    """Exact ln p(x) of the test set under independent Bernoulli pixels with the training mean."""
    p = run.data.x_train.double().mean(0).clamp(1e-6, 1 - 1e-6)
    dist = torch.distributions.Bernoulli(probs=p)
    return dist.log_prob(run.data.x_test.double()).sum(1).mean().item()


def table(summary: dict[str, Any]) -> str:
    first = next(iter(summary["runs"].values()))
    lines = [
        "| model | FID | KID | precision | recall | two-sample accuracy | "
        f"ln p(x), IS k = {first['is']['k']} | ln p(x), AIS | AIS - IS (same images) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def quality(s: dict[str, Any]) -> str:
        return (
            f"{s['fid']:.2f} | {s['kid']:.2f} ± {s['kid_stderr']:.2f} | {s['precision']:.3f}"
            f" | {s['recall']:.3f} | {s['c2st_accuracy']:.3f}"
        )

    for name, r in summary["runs"].items():
        i, a = r["is"], r["ais"]
        lines.append(
            f"| {SYSTEMS[name][0]} | {quality(r['score'])} | {i['log_likelihood']:.2f} ± "
            f"{i['stderr']:.2f} | {a['log_likelihood']:.2f} ± {a['stderr']:.2f} | "
            f"{a['minus_is']:+.2f} ± {a['minus_is_stderr']:.2f} |"
        )
    lines.append(f"| floor: binarized training images | {quality(first['floor'])} | | | |")
    lines.append(
        f"| ceiling: independent pixels | {quality(first['ceiling'])} | "
        f"{summary['independent_pixels_log_likelihood']:.2f} (exact) | | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/yardsticks"))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's 100")
    parser.add_argument("--k", type=int, default=5000, help="importance samples (full test set)")
    parser.add_argument("--n", type=int, default=10000, help="samples scored")
    parser.add_argument("--ais-limit", type=int, default=100, help="test images for AIS")
    parser.add_argument("--ais-steps", type=int, default=1000)
    parser.add_argument("--ais-chains", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="train with the compiled step")
    args = parser.parse_args()

    summary: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "runs": {},
    }
    for name in args.systems:
        overrides = dict(SYSTEMS[name][1])
        if args.epochs is not None:
            overrides["train.epochs"] = args.epochs
        if args.compile:
            overrides["train.compile"] = True
        config = load_config(CONFIG, overrides)
        run_dir = args.out / name
        _, stopped = train_or_resume(config, run_dir)
        if stopped is not None:
            sys.exit(f"{run_dir}: stopped by signal {stopped}; run the same command to resume")
        run = dgm.load_run(run_dir)
        print(f"{name}: measuring {run_dir} (epoch {run.epoch})", file=sys.stderr)
        summary["runs"][name] = measure(run, args)
        if "independent_pixels_log_likelihood" not in summary:
            summary["independent_pixels_log_likelihood"] = independent_pixels_log_likelihood(run)
        atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(table(summary))


if __name__ == "__main__":
    main()
