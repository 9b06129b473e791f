"""AIS (`dgm eval --method ais`) against the matrix-product floor of its decoder passes.

Each AIS transition is one HMC move of L leapfrog steps: L + 1 evaluations of the decoder and of
its gradient in z, on chains x images rows. The floor is the matrix products alone of those
passes, in the same shapes: every Linear layer of the decoder forward, and its input gradient
backward (the weights need none). AIS's time per intermediate distribution is constant, so a
short schedule gives the fraction; the time of the long one follows from it.

    python benchmarks/ais_speed.py runs/mnist_vae --n 1000 --steps 5 --chains 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from torch import nn

import dgm
from dgm.ais import ais_log_likelihood, sigmoid_schedule


def floor_seconds(decoder: nn.Module, rows: int, passes: int, repeats: int = 3) -> float:
    """Time of ``passes`` forward and input-gradient matrix products of ``decoder``'s Linear
    layers on ``rows`` rows, the best of ``repeats``."""
    layers = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
    xs = [torch.randn(rows, m.in_features) for m in layers]
    gs = [torch.randn(rows, m.out_features) for m in layers]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(passes):
            for m, x, g in zip(layers, xs, gs, strict=True):
                torch.addmm(m.bias, x, m.weight.T)  # forward
                g @ m.weight  # the gradient in the layer's input
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=1000, help="test images, in one batch")
    parser.add_argument("--steps", type=int, default=20, help="intermediate distributions")
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=10)
    parser.add_argument("--extrapolate", type=int, default=1000, help="steps of the long schedule")
    args = parser.parse_args()
    run = dgm.load_run(args.run_dir)
    model = run.model.eval()
    x = run.data.x_test[: args.n]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    ais_log_likelihood(model, x, args.steps, args.chains, leapfrog=args.leapfrog)
    seconds = time.perf_counter() - t0
    # one HMC transition per temperature after the first, each L + 1 gradient passes
    passes = (len(sigmoid_schedule(args.steps)) - 1) * (args.leapfrog + 1)
    floor = floor_seconds(model.decoder, args.chains * len(x), passes)
    per_step = seconds / args.steps
    print(
        json.dumps(
            {
                "run": args.run_dir,
                "n": len(x),
                "steps": args.steps,
                "chains": args.chains,
                "leapfrog": args.leapfrog,
                "ais_s": round(seconds, 2),
                "floor_s": round(floor, 2),
                "fraction_of_floor": round(floor / seconds, 3),
                f"ais_s_at_{args.extrapolate}_steps": round(per_step * args.extrapolate),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
            }
        )
    )


if __name__ == "__main__":
    main()
