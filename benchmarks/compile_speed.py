"""Training step time of one config, eager against ``train.compile``, interleaved in one process.

    python benchmarks/compile_speed.py configs/iwae/1l_vae_k1.toml          # batch 20
    OMP_NUM_THREADS=1 python benchmarks/compile_speed.py configs/iwae/2l_vae_k1.toml --rounds 8
    python benchmarks/compile_speed.py configs/iwae/*.toml --json c.json    # several, as JSON

Two trainers of the config (the same seed, on the CPU), one eager and one compiled, train epochs
over the first ``--images`` training images at a constant learning rate; the epochs alternate, the
first slot swapping every round, after two warm-up epochs each (the compiled one compiles in its
first). Prints, for each config, the median milliseconds per step of each and the median over
rounds of the per-round speed-up (eager time / compiled time) with its middle half (quartiles).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dgm.config import load_config
from dgm.data import load_dataset, to_unit_interval
from dgm.train.loop import Data, Trainer


def measure(config_path: Path, images: int, rounds: int) -> dict:
    """One config's eager and compiled trainers, epochs interleaved; milliseconds per step."""
    ds = load_dataset("mnist")
    x = to_unit_interval(ds.train_images)[:images].flatten(1)
    x_test = to_unit_interval(ds.test_images)[:500].flatten(1)
    epochs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        config = load_config(
            config_path,
            {"train.compile": compile_, "train.lr_schedule": "constant", "train.device": "cpu"},
        )
        trainer = Trainer(config, Path("unused"), data=Data(x, x_test, (28, 28)))
        epochs[name] = trainer.train_epoch
        steps = len(trainer.batches)
    for epoch in epochs.values():  # warm-up: the compiled trainer compiles here
        epoch()
        epoch()
    ms: dict[str, list[float]] = {name: [] for name in epochs}
    for r in range(rounds):
        for name in list(epochs) if r % 2 == 0 else list(epochs)[::-1]:
            start = time.perf_counter()
            epochs[name]()
            ms[name].append((time.perf_counter() - start) / steps * 1e3)
    speedups = sorted(e / c for e, c in zip(ms["eager"], ms["compiled"], strict=True))
    # inclusive: the quartiles stay within the rounds' range however few they are
    q1, _, q3 = (
        statistics.quantiles(speedups, n=4, method="inclusive")
        if len(speedups) > 1
        else speedups * 3
    )
    return {
        "config": str(config_path),
        "batch_size": load_config(config_path).train.batch_size,
        "steps_per_epoch": steps,
        "eager_ms": statistics.median(ms["eager"]),
        "compiled_ms": statistics.median(ms["compiled"]),
        "speedup": statistics.median(speedups),
        "speedup_quartiles": [q1, q3],
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "config", type=Path, nargs="*", default=[Path("configs/iwae/1l_vae_k1.toml")]
    )
    parser.add_argument("--images", type=int, default=5000, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for config_path in args.config:
        r = measure(config_path, args.images, args.rounds)
        rows.append(r)
        print(f"{config_path} ({args.threads} threads, {r['steps_per_epoch']} steps an epoch)")
        print(f"  eager     {r['eager_ms']:.3f} ms a step (median of {args.rounds})")
        print(f"  compiled  {r['compiled_ms']:.3f} ms a step")
        q1, q3 = r["speedup_quartiles"]
        print(f"  compiled is {r['speedup']:.2f}x eager (middle half {q1:.2f}-{q3:.2f})")
    summary = {"threads": args.threads, "torch": torch.__version__, "configs": rows}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def table(summary: dict) -> str:
    """The Markdown table of a summary (the docs render it from the JSON that ``--json``
    writes)."""
    lines = [
        "| config | batch | eager, ms a step | compiled whole, ms a step "
        "| compiled against eager (middle half) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["configs"]:
        q1, q3 = r["speedup_quartiles"]
        lines.append(
            f"| `{r['config']}` | {r['batch_size']} | {r['eager_ms']:.3f} | "
            f"{r['compiled_ms']:.3f} | **{r['speedup']:.2f}x** ({q1:.2f}-{q3:.2f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
