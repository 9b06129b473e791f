"""Whole processes, as users run them: ``dgm train`` against a plain PyTorch loop and Pyro's SVI.

The model is the pytorch/examples VAE (784-400-20 ReLU encoder and 20-400-784 decoder,
Bernoulli likelihood, analytic KL, Adam 1e-3, batch 128, one stochastic binarization of MNIST
made once), trained for ``--epochs`` epochs (20: the main job's length) and tested after every
epoch, each system as its own process, started the way its users start it:

- dgm: ``python -m dgm train`` with that model's settings (``--set`` keys) and no speed flag;
  it writes its run directory (checkpoints, metrics, pictures) as it always does;
- the plain loop: pytorch/examples/vae/main.py as a careful user writes it (its test pass and
  its two pictures after every epoch: reconstructions and 64 samples), reading the same IDX
  files with numpy (torchvision is not used);
- Pyro: the VAE of Pyro's tutorial (``SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam``), its
  test loss after every epoch (``--pyro-python`` names an interpreter that has Pyro; the system
  is skipped, and says so, where none does).

Each system runs one epoch before the rounds (not counted: it fills the operating system's file
cache, and, dgm's compiled, torch's on-disk compile cache, as a user's earlier runs would); then
the rounds run every system once, interleaved A B C A B C with the first slot rotating. The
figures are the median wall time over rounds (from start to exit, measured by the parent), the
median over rounds of
dgm's wall time over the other's within a round ("paired", with the middle half of those
ratios), each process's peak resident memory (``wait4``'s ``ru_maxrss``: its whole life, data
loading included) and the test ELBO each reached (nats per test image; dgm's from its
``metrics.jsonl``), so that nobody got fast by being wrong.

    python benchmarks/whole_process.py --rounds 3                 # dgm, plain, Pyro (if found)
    python benchmarks/whole_process.py --rounds 3 --pyro-python .venv-bench/bin/python \\
        --json docs/measurements/whole_process.json
    python benchmarks/whole_process.py --epochs 2 --rounds 1 --only dgm --only plain  # a look
    python benchmarks/whole_process.py --rounds 3 --dgm-args --compile   # dgm with a flag

This file imports only the standard library at its top: a child process imports what its
system needs (the plain loop: torch, numpy and Pillow; never dgm).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "src" / "dgm" / "data" / "mnist"
BATCH, HIDDEN, LATENT, LR = 128, 400, 20, 1e-3

#: dgm train's settings for the pytorch/examples model (everything else: dgm's defaults)
DGM_SETTINGS = {
    "model.hidden": "[400]",
    "model.latent_dim": "20",
    "model.activation": "relu",
    "model.init_output_bias": "false",
    "data.binarize": "static",
    "train.batch_size": "128",
    "train.lr": "0.001",
    "train.seed": "0",
}


# -- the children: each trains one system and prints one JSON line -------------------------------


def _images(name: str):
    """An IDX image file of the shipped MNIST as a float32 torch tensor in [0, 1], (N, 784)."""
    import numpy as np
    import torch

    with gzip.open(MNIST / name, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 784)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


def _binarized():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(_images("train-images-idx3-ubyte.gz"), generator=g)
    x_test = torch.bernoulli(_images("t10k-images-idx3-ubyte.gz"), generator=g)
    return x, x_test


def _save_grid(images, path: Path, rows: int) -> None:
    """A grid of 28 x 28 images (what torchvision's save_image does for these)."""
    import numpy as np
    from PIL import Image

    a = (images.detach().clamp(0, 1).numpy().reshape(-1, 28, 28) * 255).astype(np.uint8)
    cols = -(-a.shape[0] // rows)
    grid = np.zeros((rows * 30, cols * 30), np.uint8)
    for i, img in enumerate(a):
        r, c = divmod(i, cols)
        grid[r * 30 + 1 : r * 30 + 29, c * 30 + 1 : c * 30 + 29] = img
    Image.fromarray(grid).save(path)


def _plain(epochs: int, out: Path) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class VAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(784, HIDDEN)
            self.fc21 = nn.Linear(HIDDEN, LATENT)
            self.fc22 = nn.Linear(HIDDEN, LATENT)
            self.fc3 = nn.Linear(LATENT, HIDDEN)
            self.fc4 = nn.Linear(HIDDEN, 784)

        def encode(self, x):
            h = F.relu(self.fc1(x))
            return self.fc21(h), self.fc22(h)

        def decode(self, z):
            return self.fc4(F.relu(self.fc3(z)))  # logits

        def forward(self, x):
            mu, logvar = self.encode(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return self.decode(z), mu, logvar

    def loss_function(logits, x, mu, logvar):
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld

    torch.manual_seed(0)
    x, x_test = _binarized()
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    out.mkdir(parents=True, exist_ok=True)
    test_elbo = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(x.shape[0])
        train_loss = 0.0
        for start in range(0, x.shape[0], BATCH):
            xb = x[order[start : start + BATCH]]
            optimizer.zero_grad()
            logits, mu, logvar = model(xb)
            loss = loss_function(logits, xb, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for start in range(0, x_test.shape[0], BATCH):
                xb = x_test[start : start + BATCH]
                logits, mu, logvar = model(xb)
                test_loss += loss_function(logits, xb, mu, logvar).item()
                if start == 0:
                    both = torch.cat([xb[:8], torch.sigmoid(logits[:8])])
                    _save_grid(both, out / f"reconstruction_{epoch}.png", 2)
            sample = torch.sigmoid(model.decode(torch.randn(64, LATENT)))
            _save_grid(sample, out / f"sample_{epoch}.png", 8)
        test_elbo = -test_loss / x_test.shape[0]
        print(f"epoch {epoch}  train {-train_loss / x.shape[0]:.2f}  test {test_elbo:.2f}")
    return {"test_elbo": test_elbo}


def _pyro(epochs: int, out: Path) -> dict:
    import pyro
    import pyro.distributions as dist
    import torch
    import torch.nn.functional as F
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(784, HIDDEN)
            self.fc21 = nn.Linear(HIDDEN, LATENT)
            self.fc22 = nn.Linear(HIDDEN, LATENT)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            return self.fc21(h), torch.exp(0.5 * self.fc22(h))

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc3 = nn.Linear(LATENT, HIDDEN)
            self.fc4 = nn.Linear(HIDDEN, 784)

        def forward(self, z):
            return self.fc4(F.relu(self.fc3(z)))

    class VAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.decoder = Encoder(), Decoder()

        def model(self, x):
            pyro.module("decoder", self.decoder)
            with pyro.plate("data", x.shape[0]):
                loc = x.new_zeros((x.shape[0], LATENT))
                z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, scale = self.encoder(x)
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    x, x_test = _binarized()
    vae = VAE()
    svi = SVI(vae.model, vae.guide, Adam({"lr": LR}), loss=Trace_ELBO())
    test_elbo = float("nan")
    for epoch in range(1, epochs + 1):
        order = torch.randperm(x.shape[0])
        train_loss = sum(
            svi.step(x[order[start : start + BATCH]]) for start in range(0, x.shape[0], BATCH)
        )
        test_loss = sum(
            svi.evaluate_loss(x_test[start : start + BATCH])
            for start in range(0, x_test.shape[0], BATCH)
        )
        test_elbo = -test_loss / x_test.shape[0]
        print(f"epoch {epoch}  train {-train_loss / x.shape[0]:.2f}  test {test_elbo:.2f}")
    return {"test_elbo": test_elbo}


CHILDREN = {"plain": _plain, "pyro": _pyro}


# -- the parent ------------------------------------------------------------------------------------


def _command(
    name: str, epochs: int, out: Path, args: argparse.Namespace, warm_up: bool = False
) -> list[str]:
    if name == "dgm":
        sets = [a for k, v in DGM_SETTINGS.items() for a in ("--set", f"{k}={v}")]
        # the warm-up's one epoch compiles the step as the rounds' runs will (the same graphs),
        # which puts them in torch's on-disk cache
        warm = ["--set", "train.compile=true"] if warm_up else []
        return [
            sys.executable, "-m", "dgm", "train", *sets, *warm, "--epochs", str(epochs),
            "--out", str(out), "--quiet", *args.dgm_args,
        ]  # fmt: skip
    python = args.pyro_python if name == "pyro" else sys.executable
    return [python, __file__, "--child", name, "--epochs", str(epochs), "--out", str(out)]


def _test_elbo(name: str, out: Path, stdout: str) -> float:
    if name == "dgm":
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return float(rows[-1]["test_elbo"])
    return float(json.loads(stdout.strip().splitlines()[-1])["test_elbo"])


def run_once(
    name: str, epochs: int, out: Path, args: argparse.Namespace, warm_up: bool = False
) -> dict:
    """One process of ``name``: its wall time, peak resident memory and test ELBO."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONHASHSEED": "0"}
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(
            _command(name, epochs, out, args, warm_up), stdout=f, stderr=subprocess.STDOUT, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); its output:\n{text[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "test_elbo": _test_elbo(name, out, text),
    }


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    systems = {}
    for name, rs in runs.items():
        systems[name] = {
            "label": LABELS[name],
            "runs": rs,
            **{
                f"median_{key}": statistics.median(r[key] for r in rs)
                for key in ("wall_s", "cpu_s", "peak_rss_mb", "test_elbo")
            },
        }
    paired = {}
    if "dgm" in runs:
        for name, rs in runs.items():
            if name == "dgm":
                continue
            ratios = [d["wall_s"] / o["wall_s"] for d, o in zip(runs["dgm"], rs, strict=True)]
            paired[name] = {
                "median": statistics.median(ratios),
                "quartiles": list(_quartiles(ratios)),
                "memory": systems["dgm"]["median_peak_rss_mb"]
                / systems[name]["median_peak_rss_mb"],
            }
    return {
        "command": "python benchmarks/whole_process.py " + " ".join(args.argv),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "threads": args.threads,
        "dgm_args": args.dgm_args,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "systems": systems,
        "paired": paired,
    }


LABELS = {"dgm": "`dgm train`", "plain": "plain PyTorch loop", "pyro": "Pyro, Trace_ELBO"}


def table(summary: dict) -> str:
    """The Markdown table of a summary (the docs render it from the JSON)."""
    lines = [
        "| system | wall time (median) | dgm's wall time over it (paired; middle half) "
        "| peak memory | dgm's over it | test ELBO |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summary["systems"].items():
        p = summary["paired"].get(name)
        ratio = (
            f"**{p['median']:.2f}** ({p['quartiles'][0]:.2f}-{p['quartiles'][1]:.2f})"
            if p
            else "1.00"
        )
        memory = f"{p['memory']:.2f}" if p else "1.00"
        lines.append(
            f"| {s['label']} | {s['median_wall_s']:.1f} s | {ratio} | "
            f"{s['median_peak_rss_mb']:.0f} MiB | {memory} | {s['median_test_elbo']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", action="append", choices=["dgm", "plain", "pyro"])
    parser.add_argument("--pyro-python", default=sys.executable, help="a Python with pyro-ppl")
    parser.add_argument("--no-warm-up", action="store_true", help="count every process")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--keep", type=Path, help="keep the runs' directories here")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dgm-args", nargs=argparse.REMAINDER, default=[], help="the rest goes to dgm train"
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.epochs, args.out)), flush=True)
        return 0
    args.argv = argv
    names = args.only or ["dgm", "plain", "pyro"]
    if "pyro" in names:
        probe = subprocess.run([args.pyro_python, "-c", "import pyro"], capture_output=True)
        if probe.returncode != 0:
            print(f"Pyro: not importable by {args.pyro_python}; skipped (--pyro-python)")
            names.remove("pyro")
    root = args.keep or Path(tempfile.mkdtemp(prefix="dgm-whole-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.epochs} epochs, {args.threads} threads, {args.rounds} rounds: {names}")
    if not args.no_warm_up:
        for name in names:
            r = run_once(name, 1, root / f"warm-{name}", args, warm_up=True)
            print(f"warm-up  {name:6s} 1 epoch {r['wall_s']:7.1f} s (not counted)", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(args.rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            r = run_once(name, args.epochs, root / f"{name}-{i}", args)
            runs[name].append(r)
            print(
                f"round {i}  {name:6s} {r['wall_s']:7.1f} s  cpu {r['cpu_s']:7.1f} s  "
                f"{r['peak_rss_mb']:6.0f} MiB  test ELBO {r['test_elbo']:.2f}",
                flush=True,
            )
    summary = summarize(runs, args)
    print(table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
