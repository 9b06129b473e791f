"""Burda et al. (2015), Table 1 (MNIST), one row at a time: train, resume if interrupted, evaluate.

    python benchmarks/iwae_paper.py --list
    python benchmarks/iwae_paper.py 1l_vae_k1 --schedule full     # the paper's 3,280 epochs
    python benchmarks/iwae_paper.py 1l_iwae_k5 --schedule short   # about two hours, 2 CPU cores
    python benchmarks/iwae_paper.py 1l_vae_k1 --epochs 2 --train-limit 1000 --test-limit 100 \\
        --eval-k 10 --out /tmp/iwae                               # a smoke test

ROW names a config in configs/iwae/. Both schedules are the paper's stairs (lr 1e-3 * 10^(-i/7)
for a share 3^i / 3280 of the epochs, i = 0..7, see dgm.train.loop.iwae_stage): ``full`` runs its
3,280 epochs, ``short`` the row's SHORT_EPOCHS, chosen so that training takes about two hours on
this 2-core CPU. The run lives in a normal dgm run directory: run the same command again after an
interruption (Ctrl-C or SIGTERM stop it after the current epoch) and it continues from the last
checkpoint. A full-schedule run is a reference run and lives in the repository, in
results/iwae/ROW/ (config.json, metrics.jsonl and only the latest checkpoint, a few MB of
safetensors and JSON), so that it can be committed and continued on another machine; other
schedules live in OUT/ROW-SCHEDULE. When training is done the test set is evaluated with k = 5000
importance samples (Burda et al. eq. 8), and the run's result.json gets the number, the paper's,
the schedule, the wall times and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from dgm.config import load_config
from dgm.evaluate import active_units, importance_log_likelihood
from dgm.files import atomic_write_text
from dgm.train.run import load_trained, train_or_resume

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "iwae"
#: reference runs (the full schedule), kept in the repository so that they outlive a machine
RESULTS = ROOT / "results" / "iwae"

#: Burda et al. (2015), Table 1, MNIST test log-likelihood (nats), k = 5000
PAPER = {
    "1l_vae_k1": -86.76,
    "1l_vae_k5": -86.47,
    "1l_vae_k50": -86.35,
    "1l_iwae_k5": -85.54,
    "1l_iwae_k50": -84.78,
    "2l_vae_k1": -85.33,
    "2l_vae_k50": -84.25,
    "2l_iwae_k50": -82.90,
}

#: epochs of the short schedule: about two hours of training on 2 CPU cores, from measured
#: seconds per epoch at batch 20 with 1 thread beside other jobs (1l k=1 about 9 s, 1l k=5
#: about 17 s, 1l k=50 about 78 s, 2l k=1 about 14 s, 2l k=50 about 118 s)
SHORT_EPOCHS = {
    "1l_vae_k1": 750,
    "1l_vae_k5": 380,
    "1l_vae_k50": 85,
    "1l_iwae_k5": 380,
    "1l_iwae_k50": 85,
    "2l_vae_k1": 460,
    "2l_vae_k50": 55,
    "2l_iwae_k50": 55,
}


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def evaluate(run_dir: Path, k: int, seed: int = 0) -> dict:
    """log p(x) with k importance samples on the run's test set, cached per (epoch, k)."""
    trainer = load_trained(run_dir)
    cache = run_dir / f"iwae-paper-eval-k{k}.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("epoch") == trainer.epoch:
            return cached
    torch.manual_seed(seed)
    x = trainer.data.x_test
    start = time.perf_counter()
    ll = importance_log_likelihood(trainer.model, trainer.posterior, x, k)
    result = {**ll.summary(), "epoch": trainer.epoch, "seconds": time.perf_counter() - start}
    units = active_units(trainer.posterior, x)
    result["active_units_per_layer"] = units["active_units_per_layer"]
    atomic_write_text(cache, json.dumps(result, indent=2) + "\n")
    return result


def epochs_by_setting(metrics: list[dict]) -> dict[str, int]:
    """How many epochs ran with each (compiled, threads, device), e.g. {"compiled, 1 thread,
    cpu": 3153, "eager, 2 threads, cpu": 127}; "not recorded" for metrics of older runs."""
    counts: dict[str, int] = {}
    for m in metrics:
        if "threads" in m:
            threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
            key = f"{'compiled' if m['compiled'] else 'eager'}, {threads}, {m['device']}"
        else:
            key = "not recorded"
        counts[key] = counts.get(key, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", nargs="?", help="a config name in configs/iwae, e.g. 1l_vae_k1")
    parser.add_argument("--list", action="store_true", help="list the rows and stop")
    parser.add_argument("--schedule", choices=["full", "short"], default="short")
    parser.add_argument("--epochs", type=int, help="any other number of epochs (same stairs)")
    parser.add_argument("--eval-k", type=int, default=5000)
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--test-limit", type=int)
    parser.add_argument(
        "--out",
        type=Path,
        help="parent of the run directory (default runs/iwae; the full schedule's reference run "
        "lives in results/iwae/ROW unless --out is given)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train.compile (faster at batch 20 here); may be switched on or off on resume",
    )
    args = parser.parse_args(argv)
    args.out_given = args.out is not None
    args.out = args.out or Path("runs/iwae")
    if args.list or not args.row:
        for row, value in PAPER.items():
            print(f"{row:<12} paper {value:.2f}  short schedule {SHORT_EPOCHS[row]} epochs")
        return 0
    if args.row not in PAPER:
        print(f"iwae_paper: unknown row {args.row!r}; expected one of {', '.join(PAPER)}")
        return 2

    epochs = args.epochs or (3280 if args.schedule == "full" else SHORT_EPOCHS[args.row])
    schedule = "full" if epochs == 3280 else f"{epochs} epochs"
    reference = epochs == 3280 and not (args.train_limit or args.test_limit or args.out_given)
    overrides: dict = {"train.epochs": epochs, "train.compile": args.compile}
    if reference:
        overrides["train.keep_checkpoints"] = 1  # only the latest goes into the repository
    if args.train_limit:
        overrides["data.train_limit"] = args.train_limit
    if args.test_limit:
        overrides["data.test_limit"] = args.test_limit
    config = load_config(CONFIGS / f"{args.row}.toml", overrides)
    name = args.schedule if not args.epochs else f"e{epochs}"
    run_dir = RESULTS / args.row if reference else args.out / f"{args.row}-{name}"
    print(f"{args.row}: {schedule} in {run_dir} ({machine()})", flush=True)

    def show(m: dict) -> None:
        bound = m.get("test_elbo", m.get("test_iwae"))
        print(
            f"  epoch {m['epoch']}/{epochs}  lr {m['lr']:.2e}  test bound {bound:.2f}  "
            f"train time {m['train_time_s']:.0f} s",
            flush=True,
        )

    metrics, stopped = train_or_resume(config, run_dir, on_epoch=show)
    if stopped is not None:
        print(f"stopped by signal {stopped}; run the same command to continue")
        return 128 + stopped
    print(f"evaluating with k = {args.eval_k} ...", flush=True)
    ev = evaluate(run_dir, args.eval_k)
    result = {
        "row": args.row,
        "paper": PAPER[args.row],
        "log_likelihood": ev["log_likelihood"],
        "log_likelihood_stderr": ev["log_likelihood_stderr"],
        "elbo": ev["elbo"],
        "k": ev["k"],
        "n": ev["n"],
        "active_units_per_layer": ev["active_units_per_layer"],
        "epochs": epochs,
        "schedule": schedule,
        "train_time_s": metrics[-1]["train_time_s"],
        "eval_time_s": ev["seconds"],
        "machine": machine(),
        "compile": args.compile,  # this invocation's; a resumed run may have changed it
        # how the epochs computed, over every invocation (the metrics of older runs lack it)
        "epochs_by_setting": epochs_by_setting(metrics),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
    se = result["log_likelihood_stderr"]
    print(
        f"| {args.row} | {result['log_likelihood']:.2f} ± {se or 0:.2f} | {result['paper']:.2f} "
        f"| {schedule} | {result['train_time_s'] / 3600:.1f} h + {result['eval_time_s'] / 60:.0f} "
        f"min eval | {result['machine']} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
