"""The lecture's claims as curves: amortized vs per-datapoint inference, pathwise vs score function.

Trains the same model (784-200-200-50 tanh, Bernoulli, dynamic binarization, batch 100, Adam
1e-3, seed 0) with each inference / estimator combination for the same number of epochs, records
the test ELBO after every epoch against the training wall time (evaluation excluded), and
reports each system at equal epochs (the last) and at equal wall time (the shortest run's total
time). Under per-datapoint inference the test examples' q_n are fitted by the E-step (theta
frozen) before each evaluation.

    OMP_NUM_THREADS=1 python benchmarks/vbem.py --epochs 20 --out runs/bench-vbem   # ~40 min
    python benchmarks/vbem.py --epochs 1 --train-limit 2000 --test-limit 200 --out /tmp/b  # smoke

Each system is a normal dgm run directory under --out, resumable; a finished one is reused. The
summary goes to OUT/summary.json and the plot to OUT/elbo_vs_time.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dgm.config import load_config, load_run_config  # noqa: E402
from dgm.files import atomic_write_text  # noqa: E402
from dgm.plots import save_figure  # noqa: E402
from dgm.train.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from dgm.train.run import prepare_new_run, read_metrics, train_run  # noqa: E402

SYSTEMS: dict[str, dict[str, object]] = {
    "amortized, reparam": {},
    "amortized, score": {"objective.estimator": "score"},
    "amortized, score, K=10": {"objective.estimator": "score", "objective.k": 10},
    "amortized, score + NVIL baseline": {"objective.estimator": "score-baseline"},
    "amortized, score + leave-one-out, K=10": {
        "objective.estimator": "score-baseline",
        "objective.k": 10,
    },
    "per-datapoint, reparam, 1 E-step": {"inference.kind": "local"},
    "per-datapoint, reparam, 5 E-steps": {"inference.kind": "local", "inference.inner_steps": 5},
    "per-datapoint, score + NVIL baseline": {
        "inference.kind": "local",
        "objective.estimator": "score-baseline",
    },
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def run_system(name: str, overrides: dict, args: argparse.Namespace) -> list[dict]:
    base = {
        "model.init_output_bias": True,
        "train.epochs": args.epochs,
        "train.device": "cpu",
        "data.test_limit": args.test_limit,
    }
    if args.train_limit:
        base["data.train_limit"] = args.train_limit
    config = load_config(None, {**base, **overrides})
    run_dir = args.out / slug(name)
    done = latest_checkpoint(run_dir / "checkpoints")
    if done is not None:
        saved = load_run_config(run_dir / "config.json").to_dict()
        now = config.to_dict()
        saved["train"].pop("epochs")
        now["train"].pop("epochs")
        if saved != now:  # another benchmark's run (other limits, say): start again
            done = None
    if done is not None and load_checkpoint(done).epoch >= args.epochs:
        return read_metrics(run_dir)[: args.epochs]
    resume = done is not None
    if not resume:
        prepare_new_run(config, run_dir, force=True)

    def show(m: dict) -> None:
        print(
            f"  {name}: epoch {m['epoch']} test ELBO {m['test_elbo']:.2f} "
            f"train time {m['train_time_s']:.0f} s",
            flush=True,
        )

    train_run(config, run_dir, resume=resume, on_epoch=show)
    return read_metrics(run_dir)


def at_time(rows: list[dict], t: float) -> float:
    """The test ELBO of the last evaluation made within training time t."""
    within = [r["test_elbo"] for r in rows if r["train_time_s"] <= t * 1.0001]
    return within[-1] if within else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-vbem"))
    parser.add_argument("--only", nargs="*", help="run only these systems (by name)")
    args = parser.parse_args(argv)
    systems = {k: v for k, v in SYSTEMS.items() if not args.only or k in args.only}
    results = {}
    for name, overrides in systems.items():
        print(f"{name} ...", flush=True)
        results[name] = run_system(name, overrides, args)
    t_equal = min(rows[-1]["train_time_s"] for rows in results.values())
    summary = {
        "epochs": args.epochs,
        "equal_time_s": t_equal,
        "test_limit": args.test_limit,
        "systems": {
            name: {
                "test_elbo_final": rows[-1]["test_elbo"],
                "train_time_s": rows[-1]["train_time_s"],
                "test_elbo_at_equal_time": at_time(rows, t_equal),
                "curve": [[r["train_time_s"], r["test_elbo"]] for r in rows],
            }
            for name, rows in results.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    floor = -210.0  # below the data-mean decoder at initialization (about -201)
    top = max(r["test_elbo"] for rows in results.values() for r in rows) + 5
    for name, rows in results.items():
        style = "--" if name.startswith("per-datapoint") else "-"
        if min(r["test_elbo"] for r in rows) < floor:
            name += f" (falls to {rows[-1]['test_elbo']:.0f}, off the chart)"
        axes[0].plot([r["epoch"] for r in rows], [r["test_elbo"] for r in rows], style, label=name)
        axes[1].plot([r["train_time_s"] for r in rows], [r["test_elbo"] for r in rows], style)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel(f"training wall time, s ({torch.get_num_threads()} CPU thread(s))")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel(f"test ELBO, nats (first {args.test_limit} test images)")
        ax.grid(alpha=0.3)
        ax.set_ylim(floor, top)
    axes[0].legend(fontsize=8)
    fig.suptitle("MNIST: amortized vs per-datapoint inference, pathwise vs score-function")
    fig.tight_layout()
    save_figure(fig, args.out / "elbo_vs_time.png")

    width = max(len(n) for n in results)
    print(f"\n{'system':<{width}}  ELBO@{args.epochs}ep  time s  ELBO@{t_equal:.0f}s")
    for name, s in summary["systems"].items():
        print(
            f"{name:<{width}}  {s['test_elbo_final']:>9.2f}  {s['train_time_s']:>6.0f}  "
            f"{s['test_elbo_at_equal_time']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
