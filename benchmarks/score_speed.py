"""`dgm score --n N` timed by stage, against the feature network's cost in the same run.

Times, for a trained run: drawing n samples from the model (the model's cost, reported apart),
the metrics of `Run.score` (features of the samples, the test set, the floor's and ceiling's
images; KID, precision and recall, the two-sample test, the nearest training images), and as the
baseline the forward passes alone of the feature network over the same number of images
(4 sets of n). Prints one JSON object; the ratio says what the metrics cost beyond features.

    python benchmarks/score_speed.py runs/mnist_vae --n 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

import dgm
from dgm.features.mnist import features_and_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=10000)
    args = parser.parse_args()
    run = dgm.load_run(args.run_dir)
    features_and_labels(run.data.x_test[:100])  # load the network once, outside the clocks

    t0 = time.perf_counter()
    run.sample(args.n, seed=0, mean=False)
    sampling = time.perf_counter() - t0

    t0 = time.perf_counter()
    run.score(args.n, seed=0)
    total = time.perf_counter() - t0

    x = run.data.x_test.repeat(args.n // len(run.data.x_test) + 1, 1)[: args.n]
    t0 = time.perf_counter()
    for _ in range(4):  # samples, test set, floor, ceiling
        features_and_labels(x)
    features = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "run": args.run_dir,
                "n": args.n,
                "sampling_s": round(sampling, 2),
                "score_s": round(total, 2),
                "metrics_s": round(total - sampling, 2),
                "feature_passes_s": round(features, 2),
                "metrics_over_feature_passes": round((total - sampling) / features, 2),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
            }
        )
    )


if __name__ == "__main__":
    main()
