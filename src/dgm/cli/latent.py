"""``dgm latent``: the latent space of a run with an encoder (:mod:`dgm.latent`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dgm.api import load_run
from dgm.cli.common import check_seed_and_device, count, output_dir, run_config
from dgm.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "latent",
        help="the latent space: test means by label, interpolations, traversals",
        description="One figure of a run's latent space: the test means E_q[z | x] coloured by "
        "digit label (the plane itself when latent_dim = 2, else its top two principal axes), "
        "decoded interpolations between pairs of test images, and traversals of the most "
        "active units over quantiles of the prior. Needs a run with an encoder (a VAE or an "
        "autoencoder).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.png", help="output image (default RUN_DIR/latent.png)")
    p.add_argument("--limit", type=count, default=None, help="only the first N test images")
    p.add_argument("--pairs", type=count, default=4, help="pairs of test images to interpolate")
    p.add_argument("--steps", type=count, default=10, help="images per interpolation")
    p.add_argument("--units", type=count, default=4, help="most active units to traverse")
    p.add_argument("--seed", type=int, default=0, help="picks the pairs and the base image")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the view's numbers as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from dgm.latent import refusal, write_view

    check_seed_and_device(args)
    for name in ("limit", "pairs", "units"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} {value}: expected a positive count")
    if args.steps < 2:
        raise UsageError(f"--steps {args.steps}: an interpolation needs at least 2 images")
    run_dir = output_dir(args.run_dir)  # where the view is written
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or out.suffix.lower() != ".png"):
        raise UsageError(f"--out {out}: dgm latent writes a PNG image; expected a name ending .png")
    reason = refusal(run_config(args.run_dir))  # before anything is loaded
    if reason is not None:
        raise UsageError(f"{args.run_dir}: {reason}; dgm latent needs one")
    run_ = load_run(args.run_dir, device=args.device)
    path, view = write_view(
        run_,
        run_dir,
        out,
        limit=args.limit,
        pairs=args.pairs,
        steps=args.steps,
        units=args.units,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps({"path": str(path), **view.summary()}))
    else:
        print(path)
    return 0
