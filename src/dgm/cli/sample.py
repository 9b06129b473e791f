"""``dgm sample``: images from a trained run's model."""

from __future__ import annotations

import argparse
from pathlib import Path
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


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="draw x ~ p(x | z), z ~ p(z) from a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--n", type=count, default=64, help="number of samples")
    p.add_argument(
        "--out", metavar="FILE.png", help="output image (default RUN_DIR/samples-nN-seedS.png)"
    )
    add_steps_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    return p


def run(args: argparse.Namespace) -> int:
    from dgm.plots import save_grid

    check_seed_and_device(args)
    if args.n < 1:
        raise UsageError(f"--n {args.n}: expected a positive number of samples")
    run_dir = output_dir(args.run_dir)  # where what it measures is written
    # the run's own samples.png (its training's picture) is never overwritten by default
    out = Path(args.out) if args.out else run_dir / f"samples-n{args.n}-seed{args.seed}.png"
    if out.is_dir():
        raise UsageError(f"--out {out}: a directory; expected a file name ending in .png")
    if out.suffix.lower() != ".png":
        raise UsageError(
            f"--out {out}: dgm sample writes PNG images; expected a name ending in .png"
        )
    config = run_config(args.run_dir)
    check_memory(config, args.device, sizes.sampling(config, args.n), f"dgm sample --n {args.n}")
    run = load_run(args.run_dir, device=args.device)
    save_grid(run.sample(args.n, seed=args.seed, steps=args.steps), out, run.data.image_shape)
    manifest.record(run_dir, out)  # only when written into the run
    print(out)
    return 0
