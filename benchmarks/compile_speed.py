"""Training step time of one config, eager against ``train.compile``, interleaved in one process.

    python benchmarks/compile_speed.py configs/iwae/1l_vae_k1.toml          # batch 20
    OMP_NUM_THREADS=1 python benchmarks/compile_speed.py configs/iwae/2l_vae_k1.toml --rounds 8

Two trainers of the config (the same seed, on the CPU), one eager and one compiled, train epochs
over the first ``--images`` training images at a constant learning rate; the epochs alternate, the
first slot swapping every round, after two warm-up epochs each (the compiled one compiles in its
first). Prints the median milliseconds per step of each and the median over rounds of the
per-round speed-up (eager time / compiled time) with its middle half (quartiles).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from dgm.config import load_config
from dgm.data import load_dataset, to_unit_interval
from dgm.train.loop import Data, Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", default=Path("configs/iwae/1l_vae_k1.toml"))
    parser.add_argument("--images", type=int, default=5000, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = load_dataset("mnist")
    x = to_unit_interval(ds.train_images)[: args.images].flatten(1)
    x_test = to_unit_interval(ds.test_images)[:500].flatten(1)
    epochs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        config = load_config(
            args.config,
            {"train.compile": compile_, "train.lr_schedule": "constant", "train.device": "cpu"},
        )
        trainer = Trainer(config, Path("unused"), data=Data(x, x_test, (28, 28)))
        epochs[name] = trainer.train_epoch
        steps = len(trainer.batches)
    for epoch in epochs.values():  # warm-up: the compiled trainer compiles here
        epoch()
        epoch()
    ms: dict[str, list[float]] = {name: [] for name in epochs}
    for r in range(args.rounds):
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
    print(f"{args.config} ({torch.get_num_threads()} threads, {steps} steps an epoch)")
    for name, values in ms.items():
        print(f"  {name:<9} {statistics.median(values):.3f} ms a step (median of {args.rounds})")
    print(f"  compiled is {statistics.median(speedups):.2f}x eager (middle half {q1:.2f}-{q3:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
