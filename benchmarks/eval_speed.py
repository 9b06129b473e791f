"""`dgm eval --k 5000` against its matrix-product floor, with peak memory and a reference check.

Times the importance-sampled log-likelihood (k samples per test image, the chunked estimator of
dgm.evaluate) of a trained run on its test set, and in the same run the floor: the matrix
products alone of the n encoder passes and the k * n decoder passes, in the same chunk shapes.
Peak memory is measured in a fresh subprocess. The chunked estimate on the first --check images
is compared with a straightforward unchunked computation (all k samples of all those images in
one pass): 5 repeats of each with different seeds, the difference of their means against its
standard error from the repeats' spread.

    python benchmarks/eval_speed.py runs/mnist_vae --k 5000            # the full test set
    python benchmarks/eval_speed.py runs/mnist_vae --k 5000 --n 1000   # a tenth of it
    python benchmarks/eval_speed.py runs/mnist_vae --k 5000 --no-memory  # no memory subprocess
    python benchmarks/eval_speed.py runs/mnist_vae --threads 1 2 --json e.json  # both, as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from dgm.evaluate import importance_log_likelihood
from dgm.train.run import load_trained


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def floor_seconds(trainer, n: int, k: int, pairs: int) -> float:
    """The forward matrix products of the estimate: the encoder on n images, the decoder on
    k * n samples in chunks of ``pairs`` rows (what any implementation must compute)."""
    enc, dec = linears(trainer.posterior), linears(trainer.model.decoder)
    rows = max(1, pairs // 100) * 100
    chunks = math.ceil(k * n / rows)
    a_enc = [torch.randn(min(n, 100), layer.in_features) for layer in enc]
    a_dec = [torch.randn(rows, layer.in_features) for layer in dec]
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(math.ceil(n / 100)):
            for a, layer in zip(a_enc, enc, strict=True):
                torch.mm(a, layer.weight.T)
        for _ in range(chunks):
            for a, layer in zip(a_dec, dec, strict=True):
                torch.mm(a, layer.weight.T)
    return time.perf_counter() - start


def child(run_dir: str, n: int, k: int) -> None:
    trainer = load_trained(Path(run_dir))
    importance_log_likelihood(trainer.model, trainer.posterior, trainer.data.x_test[:n], k)
    print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def unchunked_reference(trainer, x: torch.Tensor, k: int, seed: int):
    """log (1/k) sum_i p(x, z_i) / q(z_i | x), every sample of every image in one pass, and
    each estimate's Monte Carlo standard error (delta method: sqrt(Var(w / E w) / k))."""
    torch.manual_seed(seed)
    with torch.inference_mode():
        q = trainer.posterior(x, torch.arange(x.shape[0]))
        z = q.sample((k,))  # (k, n, d)
        log_w = (trainer.model.log_joint(x, z) - q.log_prob(z)).double()  # (k, n)
        estimate = torch.logsumexp(log_w, 0) - math.log(k)  # (n,)
        ratio = torch.exp(log_w - estimate)  # w_i / mean w, (k, n)
        return estimate, torch.sqrt(ratio.var(0) / k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--n", type=int, help="the first n test images (default: all)")
    parser.add_argument("--check", type=int, default=20, help="images for the reference check")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[torch.get_num_threads()],
        help="thread counts to time, one after the other (default: torch's)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocess")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(str(args.run_dir), args.n, args.k)
        return 0
    trainer = load_trained(args.run_dir)
    x = trainer.data.x_test[: args.n]
    n = x.shape[0]
    from dgm.evaluate import DEFAULT_PAIRS_PER_PASS

    timings = []
    for threads in args.threads:  # each thread count timed against its own floor
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        start = time.perf_counter()
        ll = importance_log_likelihood(trainer.model, trainer.posterior, x, args.k)
        seconds = time.perf_counter() - start
        floor = floor_seconds(trainer, n, args.k, DEFAULT_PAIRS_PER_PASS)
        timings.append(
            {"threads": threads, "seconds": seconds, "floor_seconds": floor,
             "ratio_to_floor": seconds / floor}
        )  # fmt: skip
        print(f"{threads} threads: {seconds:.1f} s, floor {floor:.1f} s, {seconds / floor:.2f}x")
    peak = None
    if not args.no_memory:
        mem = subprocess.run(
            [sys.executable, __file__, str(args.run_dir), "--child", "--n", str(n), "--k",
             str(args.k)],
            capture_output=True, text=True, timeout=7200,
        )  # fmt: skip
        if mem.returncode == 0:
            peak = json.loads(mem.stdout.strip().splitlines()[-1])["max_rss_mb"]

    m = min(args.check, n)
    # both are random: repeat each with its own seeds, compare the means of the repeats (the
    # delta-method standard error of one estimate understates heavy-tailed weights)
    refs = [unchunked_reference(trainer, x[:m], args.k, seed)[0].mean().item() for seed in range(5)]
    chunks = []
    for seed in range(5):
        torch.manual_seed(100 + seed)
        chunks.append(
            importance_log_likelihood(
                trainer.model, trainer.posterior, x[:m], args.k, batch_size=7, pairs_per_pass=3000
            )
            .log_likelihood.double()
            .mean()
            .item()
        )
    diff = statistics.mean(chunks) - statistics.mean(refs)
    se = math.sqrt(statistics.variance(chunks) / 5 + statistics.variance(refs) / 5)
    summary = {
        "n": n,
        "k": args.k,
        "timings": timings,
        "peak_memory_mb": peak,
        "log_likelihood": ll.summary()["log_likelihood"],
        "reference_check": {
            "images": m,
            "repeats": 5,
            "chunked_minus_unchunked": diff,
            "stderr": se,
            "within_4_stderr": abs(diff) <= 4 * se,
        },
        "torch": torch.__version__,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def table(summary: dict) -> str:
    """The Markdown table of a summary (the docs render it from the JSON that ``--json``
    writes): each thread count's time against its floor."""
    n, k = summary["n"], summary["k"]
    lines = [
        "| threads | test images | k | time | matrix-product floor | times the floor |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in summary["timings"]:
        lines.append(
            f"| {t['threads']} | {n:,} | {k:,} | {t['seconds']:.1f} s | "
            f"{t['floor_seconds']:.1f} s | **{t['ratio_to_floor']:.2f}** |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
