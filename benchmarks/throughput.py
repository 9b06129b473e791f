"""Training throughput: dgm against a plain PyTorch loop, Pyro and pythae on the same model.

The model is the pytorch/examples VAE: 784-400-20 encoder and 20-400-784 decoder with ReLU,
Bernoulli likelihood, analytic KL, Adam (lr 1e-3), batch 128, on the full MNIST training set
(binarized once, the same tensor for every system), on the same threads. Systems run one epoch
each per round, interleaved round by round (the first slot rotating); the figure is the median
images/s over rounds, and "paired" is the median over rounds of the ratio within a round, with
the middle half of those per-round ratios (their quartiles) beside it. The floor is the matrix
products alone of one training step (forward, and backward for the weights and the inputs),
timed on the same machine in the same run. After the rounds each system's test
ELBO (the same binarized test set) shows that nobody got fast by being wrong. A compiled system
trains one epoch before the rounds (it compiles then: its two batch sizes, 128 and the last 96);
that epoch's time is printed, not counted. The ratios are against dgm (eager), or against the
system ``--reference`` names.

    python benchmarks/throughput.py --rounds 5          # dgm (float32, bfloat16, compiled),
                                                        # plain, floor
    python benchmarks/throughput.py --only plain --only "dgm, compiled"     # a subset
    python benchmarks/throughput.py --only "plain PyTorch loop" --reference "dgm, compiled"
    .venv-bench/bin/python benchmarks/throughput.py --rounds 5 --json out.json
                                                              # + Pyro and pythae (the bench extra)

Peak memory is each system's own: it is measured in a fresh subprocess that trains 100 steps
(the process's peak resident memory from the first step on, where Linux lets it reset the high
water mark, else over its whole life; with --device cuda, torch.cuda.max_memory_allocated).

    python benchmarks/throughput.py --device cuda --rounds 5    # every system on the GPU

Two versions of dgm in one process, interleaved like the other systems (``--versus ROOT`` adds
ROOT/src/dgm's eager and compiled systems; ``git worktree add /tmp/before REV`` makes a ROOT):

    python benchmarks/throughput.py --rounds 9 --no-memory --only "dgm, compiled" \
        --only "dgm (versus)" --only "dgm, compiled (versus)" --versus /tmp/before \
        --reference "dgm (versus)"
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm.config import load_config
from dgm.data import binarize_fixed, load_dataset, to_unit_interval
from dgm.train.loop import Data, Trainer

BATCH, HIDDEN, LATENT, LR = 128, 400, 20, 1e-3
DEVICE = torch.device("cpu")  # --device: every system's model and data live here


def synchronize() -> None:
    """Wait for the device's queued work (a GPU runs behind the Python that launched it)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("mnist")
    x = binarize_fixed(to_unit_interval(ds.train_images), 0)
    x_test = binarize_fixed(to_unit_interval(ds.test_images), 1)
    return x.to(DEVICE), x_test.to(DEVICE)


def batches(x: torch.Tensor, g: torch.Generator):
    order = torch.randperm(x.shape[0], generator=g).to(x.device)
    for start in range(0, x.shape[0], BATCH):
        yield x[order[start : start + BATCH]]


# -- systems: each is (train_one_epoch(), test_elbo()) ------------------------------------------


def other_checkout(root: Path):
    """dgm from another checkout (ROOT/src/dgm), imported beside this one as ``dgm_other``: a
    copy of its package with its own imports renamed, in a temporary directory, so that both
    versions train in one process, interleaved round by round (``--versus ROOT``)."""
    import importlib
    import re
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="dgm-other-"))
    shutil.copytree(
        root / "src" / "dgm", tmp / "dgm_other", ignore=shutil.ignore_patterns("__pycache__")
    )
    pattern = re.compile(r"\bdgm(?=\.[a-z_]|\s+import\b)")
    for f in (tmp / "dgm_other").rglob("*.py"):
        f.write_text(pattern.sub("dgm_other", f.read_text()))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("dgm_other.config"), importlib.import_module(
        "dgm_other.train.loop"
    )


def dgm_system(x, x_test, precision: str = "float32", compile_: bool = False, other=None):
    overrides = {
        "train.precision": precision,
        "train.compile": compile_,
        "model.hidden": [HIDDEN],
        "model.latent_dim": LATENT,
        "model.activation": "relu",
        "model.init_output_bias": False,
        "data.binarize": "static",
        "train.batch_size": BATCH,
        "train.lr": LR,
        "train.eval_batch_size": 10_000,
        "train.device": str(DEVICE),
    }
    config_module, loop = other if other is not None else (None, None)
    config = (config_module.load_config if other else load_config)(None, overrides)
    data = (loop.Data if other else Data)(x, x_test, (28, 28))  # binary: static is a no-op
    trainer = (loop.Trainer if other else Trainer)(config, Path("unused"), data=data)
    return trainer.train_epoch, lambda: trainer.evaluate()["test_elbo"]


class Encoder(nn.Module):
    """pytorch/examples/vae/main.py's encoder: x -> (mu, log variance)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, LATENT)
        self.fc22 = nn.Linear(HIDDEN, LATENT)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)


class Decoder(nn.Module):
    """pytorch/examples/vae/main.py's decoder: z -> logits of p(x | z)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc3 = nn.Linear(LATENT, HIDDEN)
        self.fc4 = nn.Linear(HIDDEN, 784)

    def forward(self, z):
        return self.fc4(F.relu(self.fc3(z)))


class PlainVAE(nn.Module):
    """pytorch/examples/vae/main.py, written as a careful user would."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()

    def forward(self, x):
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


def plain_loss(model, x):
    logits, mu, logvar = model(x)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld  # -ELBO summed over the batch


def plain_system(x, x_test):
    torch.manual_seed(0)
    model = PlainVAE().to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(0)

    def epoch():
        for xb in batches(x, g):
            loss = plain_loss(model, xb)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def test():
        with torch.no_grad():
            return -plain_loss(model, x_test).item() / x_test.shape[0]

    return epoch, test


def pyro_system(x, x_test, elbo_name: str):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
    from pyro.optim import Adam

    torch.manual_seed(0)

    encoder, decoder = Encoder().to(DEVICE), Decoder().to(DEVICE)

    def model(x):
        pyro.module(f"decoder_{elbo_name}", decoder)  # Pyro's store is global: unique names
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module(f"encoder_{elbo_name}", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, logvar = encoder(x)
            pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * logvar)).to_event(1))

    loss = {"Trace_ELBO": Trace_ELBO, "TraceMeanField_ELBO": TraceMeanField_ELBO}[elbo_name]()
    svi = SVI(model, guide, Adam({"lr": LR}), loss=loss)
    g = torch.Generator().manual_seed(0)

    def epoch():
        for xb in batches(x, g):
            svi.step(xb)

    def test():
        return -svi.evaluate_loss(x_test) / x_test.shape[0]

    return epoch, test


def pythae_system(x, x_test):
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    torch.manual_seed(0)

    class PythaeEncoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = Encoder()

        def forward(self, x):
            mu, logvar = self.net(x.reshape(x.shape[0], -1))
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class PythaeDecoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = Decoder()

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    config = VAEConfig(input_dim=(784,), latent_dim=LATENT, reconstruction_loss="bce")
    model = VAE(config, encoder=PythaeEncoder(), decoder=PythaeDecoder()).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(0)

    def epoch():
        model.train()
        for xb in batches(x, g):
            loss = model({"data": xb}).loss
            opt.zero_grad()
            loss.backward()
            opt.step()

    def test():
        model.eval()
        with torch.no_grad():
            return -model({"data": x_test}).loss.item()

    return epoch, test


SYSTEMS: dict[str, Callable] = {
    "dgm": dgm_system,
    "dgm, bfloat16": lambda x, t: dgm_system(x, t, "bfloat16"),
    "dgm, compiled": lambda x, t: dgm_system(x, t, compile_=True),
    "plain PyTorch loop": plain_system,
    "Pyro Trace_ELBO": lambda x, t: pyro_system(x, t, "Trace_ELBO"),
    "Pyro TraceMeanField_ELBO": lambda x, t: pyro_system(x, t, "TraceMeanField_ELBO"),
    "pythae VAE": pythae_system,
}


def available(name: str) -> bool:
    module = {"Pyro": "pyro", "pythae": "pythae"}.get(name.split()[0])
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# -- the matrix-product floor ---------------------------------------------------------------------


def floor_seconds_per_step(repeats: int = 300) -> float:
    """The forward and backward matrix products of one training step, nothing else."""
    b = BATCH
    shapes = [(784, HIDDEN), (HIDDEN, 2 * LATENT), (LATENT, HIDDEN), (HIDDEN, 784)]
    ws = [torch.randn(i, o, device=DEVICE) for i, o in shapes]
    ins = [torch.randn(b, i, device=DEVICE) for i, _ in shapes]
    grads = [torch.randn(b, o, device=DEVICE) for _, o in shapes]

    def step():
        for a, w in zip(ins, ws, strict=True):
            torch.mm(a, w)  # forward
        for i, (a, w, g) in enumerate(zip(ins, ws, grads, strict=True)):
            torch.mm(a.T, g)  # weight gradient
            if i > 0:
                torch.mm(g, w.T)  # input gradient (none needed for the data)

    for _ in range(20):
        step()
    best = float("inf")
    for _ in range(5):
        synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        synchronize()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


# -- memory, each system alone --------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's resident memory (Linux: writing 5
    to /proc/self/clear_refs); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str, steps: int) -> None:
    """Train ``steps`` steps of ``name`` and print its peak memory while training: on the CPU
    the peak resident memory from the first step on (the data it holds included, the transient
    of loading MNIST, which every system shares and which used to be the whole figure, not);
    on a GPU ``torch.cuda.max_memory_allocated``."""
    x, x_test = mnist()
    epoch, _ = SYSTEMS[name](x[: steps * BATCH], x_test[:100])
    synchronize()
    if DEVICE.type == "cuda":  # the GPU's memory, which is what runs out there
        torch.cuda.reset_peak_memory_stats(DEVICE)
        epoch()
        synchronize()
        print(json.dumps({"peak_memory_mb": torch.cuda.max_memory_allocated(DEVICE) / 2**20}))
        return
    _reset_peak_rss()  # where not allowed, the high-water mark stays the whole life's
    epoch()
    print(json.dumps({"peak_memory_mb": _peak_rss_mb()}))


def peak_memory_mb(name: str) -> float | None:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--device", str(DEVICE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_memory_mb"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (every system)")
    parser.add_argument(
        "--only", action="append", metavar="SYSTEM", help="run dgm and this system (repeatable)"
    )
    parser.add_argument(
        "--reference", default="dgm", metavar="SYSTEM", help="the system the ratios are against"
    )
    parser.add_argument(
        "--versus",
        type=Path,
        metavar="ROOT",
        help="also 'dgm (versus)' and 'dgm, compiled (versus)': another checkout's dgm, in this "
        "process (e.g. a git worktree of an earlier commit)",
    )
    args = parser.parse_args(argv)
    if args.versus:
        other = other_checkout(args.versus)
        SYSTEMS["dgm (versus)"] = lambda x, t: dgm_system(x, t, other=other)
        SYSTEMS["dgm, compiled (versus)"] = lambda x, t: dgm_system(
            x, t, compile_=True, other=other
        )
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.child:
        child(args.child, 100)
        return 0
    names = [n for n in SYSTEMS if available(n)]
    if args.only:
        names = [n for n in names if n in ("dgm", args.reference) or n in args.only]
    if args.reference not in names:
        parser.error(f"--reference {args.reference!r} is not one of the systems run: {names}")
    x, x_test = mnist()
    systems = {name: SYSTEMS[name](x, x_test) for name in names}
    for name in names:  # compiling is not throughput: a compiled system's first epoch is apart
        if "compiled" in name:
            start = time.perf_counter()
            systems[name][0]()
            synchronize()
            print(f"{name}: warm-up epoch (compiling) {time.perf_counter() - start:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in names}
    floors = []
    for r in range(args.rounds):
        # a different system goes first each round: no system always runs in the same slot
        for name in names[r % len(names) :] + names[: r % len(names)]:
            epoch = systems[name][0]
            synchronize()
            start = time.perf_counter()
            epoch()
            synchronize()
            times[name].append(x.shape[0] / (time.perf_counter() - start))
        floors.append(BATCH / floor_seconds_per_step())
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:,.0f}" for n in names) + " img/s",
            flush=True,
        )
    floor = statistics.median(floors)
    ref = args.reference
    ref_ips = statistics.median(times[ref])
    results = {}
    for name, (_, test) in systems.items():
        ips = statistics.median(times[name])
        # the machine's speed drifts between rounds (by 30% here): within a round the systems
        # ran back to back, so the median of the per-round ratios cancels the drift
        paired = [t / d for t, d in zip(times[name], times[ref], strict=True)]
        # the reference's speed relative to this system, round by round: the middle half of
        # the rounds says whether a ratio near 1.1 is settled by this run or is within its noise
        speedups = sorted(1 / p for p in paired)
        # inclusive: the quartiles stay within the rounds' range however few they are
        q1, q3 = (
            statistics.quantiles(speedups, n=4, method="inclusive")[::2]
            if len(speedups) > 1
            else speedups * 2
        )
        results[name] = {
            "images_per_s": ips,
            "round_images_per_s": times[name],
            "ratio_to_dgm": ips / ref_ips,
            "paired_ratio_to_dgm": statistics.median(paired),
            "paired_speedup_quartiles": [q1, q3],
            "fraction_of_floor": ips / floor,
            "test_elbo": test(),
            "peak_memory_mb": None if args.no_memory else peak_memory_mb(name),
        }
    summary = {
        "floor_images_per_s": floor,
        "threads": args.threads,
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        "rounds": args.rounds,
        "reference": ref,  # the system every ratio_to_dgm is against
        "torch": torch.__version__,
        "systems": results,
    }
    header = f"{'system':<26} {'img/s':>9} {'ref / it':>9} {'paired':>7} {'(middle half)':>14}"
    print(f"\n{header} {'of floor':>9} {'test ELBO':>10} {'MB':>6}")
    for name, r in results.items():
        mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] else "-"
        q1, q3 = r["paired_speedup_quartiles"]
        print(
            f"{name:<26} {r['images_per_s']:>9,.0f} {1 / r['ratio_to_dgm']:>8.2f}x "
            f"{1 / r['paired_ratio_to_dgm']:>6.2f}x {f'{q1:.2f}-{q3:.2f}':>14} "
            f"{r['fraction_of_floor']:>9.2f} {r['test_elbo']:>10.2f} {mem:>6}"
        )
    print(f"{'matrix-product floor':<26} {floor:>9,.0f}")
    print(f"(ref: {ref}; 'ref / it' is its speed relative to each system)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def table(summary: dict) -> str:
    """The Markdown table of a summary (the docs render it from the JSON that ``--json``
    writes): each system's median images/s, the reference's speed relative to it (median of
    the rounds, and paired with the middle half of the rounds), its fraction of the
    matrix-product floor, its test ELBO and, where measured, its peak memory."""
    ref = summary["reference"]
    label = lambda name: "dgm, eager" if name == "dgm" else name  # noqa: E731
    lines = [
        f"| system | images/s | {label(ref)}: its speed relative to each (medians; paired, "
        "middle half) "
        "| fraction of the matrix-product floor | test ELBO | peak memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in summary["systems"].items():
        q1, q3 = r["paired_speedup_quartiles"]
        speed = (
            "1.00"
            if name == ref
            else f"{1 / r['ratio_to_dgm']:.2f}x ({1 / r['paired_ratio_to_dgm']:.2f}x; "
            f"{q1:.2f}-{q3:.2f}x)"
        )
        memory = f"{r['peak_memory_mb']:.0f} MB" if r.get("peak_memory_mb") else "—"
        lines.append(
            f"| {label(name)} | {r['images_per_s']:,.0f} | {speed} | {r['fraction_of_floor']:.2f} "
            f"| {r['test_elbo']:.2f} | {memory} |"
        )
    floor = summary["floor_images_per_s"]
    lines.append(f"| matrix products alone | {floor:,.0f} | | 1.00 | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
