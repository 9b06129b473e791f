"""Two checkouts of dgm side by side: throughput.py of each, as its own process, A B A B.

    python benchmarks/versions.py BEFORE AFTER --pairs 4 -- --rounds 3 --only dgm \\
        --only "dgm, compiled" --no-memory

BEFORE and AFTER are repository roots (a `git worktree add /tmp/before REV` gives one); each
runs its own benchmarks/throughput.py with its own src/ first on PYTHONPATH, with the arguments
after ``--``, in turn, BEFORE first in odd pairs and AFTER first in even ones. For every system
it prints the median images/s of each checkout, and the median over pairs of the ratio
AFTER / BEFORE within a pair, with the quartiles of those ratios: a pair runs back to back, so
the ratio holds when the machine's speed drifts. ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(root: Path, args: list[str]) -> dict[str, float]:
    """images/s by system from one throughput.py process of the checkout at ``root``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = {**os.environ, "PYTHONPATH": str(root / "src")}
        cmd = [
            sys.executable,
            str(root / "benchmarks" / "throughput.py"),
            *args,
            "--json",
            str(out),
        ]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        systems = json.loads(out.read_text())["systems"]
    return {name: r["images_per_s"] for name, r in systems.items()}


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for i in range(args.pairs):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for which in order:
            runs[which].append(run_once(getattr(args, which), rest))
            print(f"pair {i + 1}/{args.pairs}: {which} {runs[which][-1]}", flush=True)
    result = {}
    for name in runs["before"][0]:
        before = [r[name] for r in runs["before"]]
        after = [r[name] for r in runs["after"]]
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        q1, q3 = quartiles(ratios)
        result[name] = {
            "before_images_per_s": statistics.median(before),
            "after_images_per_s": statistics.median(after),
            "paired_ratio": statistics.median(ratios),
            "paired_ratio_quartiles": [q1, q3],
            "ratios": ratios,
        }
        print(
            f"{name:<20} before {statistics.median(before):>9,.0f} img/s  after "
            f"{statistics.median(after):>9,.0f} img/s  paired after/before "
            f"{statistics.median(ratios):.3f} (middle half {q1:.3f}-{q3:.3f})"
        )
    if args.json:
        args.json.write_text(json.dumps({"pairs": args.pairs, "systems": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
