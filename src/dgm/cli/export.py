"""``dgm export``: a run's weights and configuration only, to share (see :mod:`dgm.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dgm.export import export_run


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="write a run's weights and config (safetensors + JSON) to a new directory",
        description="Write the weights of a run's latest checkpoint (or --checkpoint's) and its "
        "configuration to OUT: config.json, weights.safetensors, dgm-export.json; no optimizer "
        "or random-number state. dgm sample, eval, score and dgm.load_run read OUT as a run.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("out", metavar="OUT", help="a new directory")
    p.add_argument("--checkpoint", metavar="DIR", help="a checkpoint of the run (RUN_DIR/"
                   "checkpoints/epoch-NNNN) instead of its latest")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out, checkpoint=args.checkpoint)
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    print(f"{out} ({size / 1e6:.1f} MB)")
    return 0
