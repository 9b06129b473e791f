"""``dgm report``: a run on one self-contained HTML page (:mod:`dgm.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dgm.cli.common import check_seed_and_device, run_config
from dgm.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of a run",
        description="One HTML page of a run, its images embedded (no script, no request to "
        "anywhere): the configuration, the curves, samples, reconstructions and the latent "
        "view (drawn when missing for a run with an encoder), every evaluation in the run "
        "directory as a table, the last metrics row and the versions.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.html", help="output page (default RUN_DIR/report.html)")
    p.add_argument("--device", default=None, help="where a missing latent view is computed")
    return p


def run(args: argparse.Namespace) -> int:
    from dgm.report import write_report

    check_seed_and_device(args)
    run_dir = args.run_dir  # a run, an export or pretrained:NAME
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or out.suffix.lower() not in (".html", ".htm")):
        raise UsageError(
            f"--out {out}: dgm report writes an HTML page; expected a name ending .html"
        )
    run_config(run_dir)  # one line if it is not a run
    print(write_report(run_dir, out, device=args.device))
    return 0
