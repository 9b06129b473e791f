"""``dgm score``: sample quality of a trained run in the shipped MNIST feature space."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import dgm.manifest as manifest
import dgm.sizes as sizes
from dgm.api import load_run
from dgm.cli.common import (
    add_steps_argument,
    check_memory,
    check_seed_and_device,
    count,
    output_dir,
    run_config,
)
from dgm.errors import UsageError

#: (key, header, format) of the printed table
ROWS = (
    ("fid", "FID", "{:.2f}"),
    ("kid", "KID", None),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("c2st_accuracy", "two-sample accuracy", "{:.3f}"),
    ("label_entropy", "label entropy (nats)", "{:.3f}"),
    ("nearest_train_distance", "nearest train (L2)", "{:.2f}"),
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("score", help="sample quality (FID, KID, precision, recall, ...) of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--n", type=count, default=10000, help="number of samples")
    p.add_argument(
        "--mean",
        action="store_true",
        help="score the means of p(x | z) against the grey test images, not draws x ~ p(x | z)",
    )
    add_steps_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="override the run's device")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _cell(row: dict[str, Any], key: str, fmt: str | None) -> str:
    if key not in row:
        return "-"
    if key == "kid":
        return f"{row['kid']:.2f} ± {row['kid_stderr']:.2f}"
    return fmt.format(row[key])


def run(args: argparse.Namespace) -> int:
    from dgm.files import atomic_write_text
    from dgm.plots import save_score

    check_seed_and_device(args)
    if args.n < 2:
        raise UsageError(f"--n {args.n}: expected at least 2 samples")
    run_dir = output_dir(args.run_dir)  # where what it measures is written
    config = run_config(args.run_dir)
    check_memory(config, args.device, sizes.scoring(config, args.n), f"dgm score --n {args.n}")
    run = load_run(args.run_dir, device=args.device)
    stage = None if args.json else (lambda s: print(f"{s} ...", file=sys.stderr))
    result = run.score(args.n, seed=args.seed, mean=args.mean, on_stage=stage, steps=args.steps)
    summary = {
        **result.summary(),
        "n": args.n,
        "samples": "means" if args.mean else "draws",
        "epoch": run.epoch,
        "seed": args.seed,
    }
    # the samples, their number, seed and the epoch in the name: another score never replaces it
    what = "score-mean" if args.mean else "score"
    name = f"{what}-n{args.n}-seed{args.seed}-epoch{run.epoch}"
    atomic_write_text(run_dir / f"{name}.json", json.dumps(summary, indent=2) + "\n")
    floor_hist = ("training images (floor)", result.floor["label_histogram"])
    save_score(
        result.samples,
        result.nearest,
        [("samples", result.model["label_histogram"]), floor_hist],
        run_dir / f"{name}.png",
        run.data.image_shape,
    )
    manifest.record(run_dir, run_dir / f"{name}.json", run_dir / f"{name}.png")
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{run_dir}: {args.n} {summary['samples']} at epoch {run.epoch}")
    print(f"{'':22s}{'model':>18s}{'floor':>18s}{'ceiling':>18s}")
    for key, header, fmt in ROWS:
        cells = (_cell(r, key, fmt) for r in (result.model, result.floor, result.ceiling))
        print(f"{header:22s}" + "".join(f"{c:>18s}" for c in cells))
    print(f"wrote {run_dir / (name + '.json')} and {run_dir / (name + '.png')}")
    return 0
