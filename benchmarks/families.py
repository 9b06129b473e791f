"""Each family of the lecture's last slide on the same MNIST, for the same wall-clock budget, on
the same two yardsticks: ln p(x) (or a bound on it) in nats where the model has one, and sample
quality in the shipped feature space.

The systems (``SYSTEMS``): the VAE of ``configs/mnist_vae.toml`` and its IAF-4 posterior, the
DCGAN with the non-saturating loss (``configs/mnist_gan.toml``), WGAN-GP
(``configs/mnist_wgan_gp.toml``), the diffusion model (``configs/mnist_diffusion.toml``), the
RBM (``configs/mnist_rbm.toml``) and the deep EBM (``configs/mnist_ebm.toml``). Each trains
epoch by epoch until the next epoch would
pass ``--budget`` seconds of training (the epochs' own time, as ``train_time_s`` counts it),
then is measured:

- ln p(x): the VAEs' importance-sampled estimate (``--k`` samples) and the diffusion model's
  ELBO (``--bound-steps`` stratified time steps per image; both on the first ``--ll-limit``
  test images), the RBM's by AIS for log Z (its config's temperatures and runs; every test
  image). The GANs' images are grey levels, not binary: they have no number in this column;
  their ln p(x) is the Wu et al. protocol below;
- sample quality as ``dgm score --n N`` measures it (:meth:`dgm.Run.score`), beside the floor
  at the same N (FID at N = 2,000 is biased upwards against N = 10,000: the floor row shows by
  how much);
- the seconds to sample 1,000 images (timed on 100 where 100 take more than 10 s), and for a
  sampler with steps its cost at ``--sampler-steps`` steps too (a diffusion model's T = 1000 is
  its ancestral sampler), the trained parameters, epochs and training time.

The Wu et al. (2017) protocol (``--wu``): the GAN's generator and a VAE trained on the same
dequantized grey levels (Gaussian likelihood, fixed sigma = 0.05), each under the observation
model N(mean(z), sigma^2 I) with sigma chosen from ``WU_SCALES`` by AIS on 20 training
images, then AIS on the first ``--wu-limit`` test images.

Runs live under OUT (an interrupted benchmark resumes: the same command again); the summary
goes to OUT/summary.json, the figure of every family's samples beside training images to
OUT/families.png (``--publish`` copies both into docs/: measurements/families.json and
images/families.png).

    OMP_NUM_THREADS=2 python benchmarks/families.py --budget 3600 --out runs/families
    python benchmarks/families.py --budget 1 --train-limit 500 --n 100 --k 10 --ll-limit 20 \
        --bound-steps 3 --wu --wu-limit 2 --wu-steps 10 --out /tmp/f          # a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributions import Independent, Normal

import dgm
import dgm.counts as counts
from dgm.ais import ais_log_likelihood
from dgm.build import as_evaluated
from dgm.config import load_config
from dgm.files import atomic_write_text
from dgm.train.checkpoint import latest_checkpoint
from dgm.train.run import read_metrics

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
#: name -> (label, config file, overrides)
SYSTEMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "vae": ("VAE (K = 5 ELBO)", "mnist_vae.toml", {}),
    "iaf4": ("VAE, IAF posterior (4 steps)", "mnist_vae.toml", {"model.posterior": "iaf:4"}),
    "gan": ("GAN, non-saturating (DCGAN)", "mnist_gan.toml", {}),
    "wgan_gp": ("WGAN-GP (DCGAN)", "mnist_wgan_gp.toml", {}),
    "diffusion": ("diffusion (DDPM, U-Net, DDIM 100)", "mnist_diffusion.toml", {}),
    # a constant rate: the config's exponential decay runs over its 100 epochs, not a budget
    "rbm": ("RBM, CD-25", "mnist_rbm.toml", {"train.lr_schedule": "constant"}),
    "ebm": ("deep EBM (Langevin, replay buffer)", "mnist_ebm.toml", {}),
}
#: the VAE of the Wu et al. protocol: grey levels, a fixed-sigma Gaussian likelihood
WU_VAE = {
    "data.binarize": "none",
    "data.dequantize": True,
    "model.likelihood": "gaussian",
    "model.gaussian_scale": 0.05,
    "model.init_output_bias": False,
}
WU_SCALES = (0.02, 0.05, 0.1, 0.2)
SCORE_KEYS = ("fid", "kid", "kid_stderr", "precision", "recall", "c2st_accuracy", "label_entropy")
#: Wu et al. 2017, Table 2 (MNIST, AIS, nats): their 50-dimensional GAN and VAE
WU_PAPER = {"gan": 627.3, "vae": 991.4}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=3600.0, help="training seconds per system")
    p.add_argument("--n", type=int, default=2000, help="samples scored per system")
    p.add_argument("--k", type=int, default=1000, help="VAEs: importance samples")
    p.add_argument("--bound-steps", type=int, default=20, help="diffusion: time steps")
    p.add_argument("--ll-limit", type=int, default=2000, help="test images for IS and the bound")
    p.add_argument("--wu", action="store_true", help="also the Wu et al. AIS protocol")
    p.add_argument("--wu-limit", type=int, default=20, help="test images for the Wu protocol")
    p.add_argument("--wu-steps", type=int, default=500, help="AIS steps of the Wu protocol")
    p.add_argument("--wu-chains", type=int, default=8)
    p.add_argument("--train-limit", type=int, default=None, help="first N training images")
    p.add_argument("--only", action="append", choices=list(SYSTEMS), help="these systems only")
    p.add_argument(
        "--sampler-steps", type=int, nargs="*", default=[1000, 20],
        help="samplers with steps: also time these step counts (on --steps-images images)",
    )  # fmt: skip
    p.add_argument("--steps-images", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "families")
    p.add_argument("--publish", action="store_true", help="copy summary and figure to docs/")
    return p.parse_args(argv)


# -- training within a budget ------------------------------------------------------------------


def train_within(run_dir: Path, config_path: Path, overrides: dict[str, Any], budget: float):
    """Train epoch by epoch (a new run, then resumes of one more epoch) while the next epoch
    fits in ``budget`` seconds of training; a finished or interrupted run goes on from where
    it is. Returns the metrics rows."""
    if latest_checkpoint(run_dir / "checkpoints") is None:
        config = load_config(config_path, {**overrides, "train.epochs": 1})
        dgm.fit(config, out=run_dir, force=True, stop_on_signals=True)
    while True:
        rows = read_metrics(run_dir)
        spent = sum(r["epoch_time_s"] for r in rows)
        per_epoch = spent / max(len(rows), 1)
        if spent + per_epoch > budget:
            return rows
        dgm.resume(run_dir, epochs=len(rows) + 1, stop_on_signals=True)


def trained_parameters(config: Any) -> int:
    parts = counts.networks(config, 784, 60_000)
    return sum(p.parameters for p in parts if "not trained" not in p.name)


# -- the yardsticks ----------------------------------------------------------------------------


def log_likelihood(run: dgm.Run, args: argparse.Namespace) -> dict[str, Any] | None:
    t0 = time.perf_counter()
    if run.kind in ("gan", "ebm"):  # grey levels; the EBM has no tractable Z
        return None
    if run.kind == "rbm":
        r = run.evaluate_ais(seed=args.seed)
        out = {
            "log_likelihood": r["log_likelihood"],
            "stderr": r["log_likelihood_stderr"],
            "log_z_stderr": r["log_z_stderr"],
            "how": f"AIS for log Z ({r['temperatures']:,} temperatures x {r['runs']} runs)",
            "examples": r["examples"],
        }
    elif run.kind == "diffusion":
        r = run.evaluate(k=args.bound_steps, limit=args.ll_limit, seed=args.seed)
        out = {
            "elbo": r["elbo"],
            "stderr": r["elbo_stderr"],
            "how": f"ELBO ({r['time_steps']} stratified steps of T = {r['steps']})",
            "examples": r["examples"],
        }
    else:
        r = run.evaluate(k=args.k, limit=args.ll_limit, seed=args.seed)
        out = {
            "log_likelihood": r["log_likelihood"],
            "stderr": r["log_likelihood_stderr"],
            "elbo": r["elbo"],
            "how": f"IS (k = {args.k})",
            "examples": r["n"],
        }
    return {**out, "s": time.perf_counter() - t0}


def sample_quality(run: dgm.Run, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    report = run.score(n=args.n, seed=args.seed)
    pick = lambda d: {k: d[k] for k in SCORE_KEYS}  # noqa: E731
    return {
        "score": pick(report.model),
        "floor": pick(report.floor),
        "label_histogram": report.model.get("label_histogram"),
        "s": time.perf_counter() - t0,
    }


def sampling_seconds(run: dgm.Run, n: int = 1000, slow_s: float = 10.0) -> float:
    """Seconds per 1,000 samples: a timed draw of 100 (after a warm-up of 10), then of ``n``
    unless the 100 took more than ``slow_s`` (a sampler whose cost is many network passes per
    image, linear in the number of images at these sizes)."""
    run.sample(10, seed=0, mean=False)  # warm up
    t0 = time.perf_counter()
    run.sample(100, seed=1, mean=False)
    s = time.perf_counter() - t0
    if s > slow_s or n <= 100:
        return s * 1000 / 100
    t0 = time.perf_counter()
    run.sample(n, seed=1, mean=False)
    return (time.perf_counter() - t0) * 1000 / n


def seconds_by_steps(run: dgm.Run, steps: list[int], n: int) -> dict[str, float] | None:
    """Seconds per 1,000 samples at each number of sampler steps (a diffusion model's DDIM
    steps, ancestral at T; an RBM's Gibbs sweeps; an EBM's Langevin steps), timed on ``n``
    images; None for a model that samples in one pass."""
    family = run.family
    if family is None or not family.sampler_has_steps:
        return None
    out = {}
    for k in steps:
        t0 = time.perf_counter()
        run.sample(n, seed=1, mean=False, steps=k)
        out[str(k)] = (time.perf_counter() - t0) * 1000 / n
    return out


# -- Wu et al. 2017 ----------------------------------------------------------------------------


class Observed(nn.Module):
    """A decoder's mean m(z) under N(m(z), scale^2 I): the model AIS anneals over."""

    def __init__(self, prior, mean, scale: float) -> None:  # noqa: ANN001
        super().__init__()
        self._prior, self._mean, self.scale = prior, mean, scale

    def prior(self):  # noqa: ANN201
        return self._prior()

    def likelihood(self, z: torch.Tensor):  # noqa: ANN201
        m = self._mean(z)
        return Independent(Normal(m, torch.full_like(m, self.scale)), 1)


def observed(run: dgm.Run, scale: float) -> Observed:
    model = run.model.eval()
    if run.kind == "gan":
        return Observed(model.prior, model, scale)
    return Observed(model.prior, lambda z: model.likelihood(z).mean, scale)


def wu_protocol(runs: dict[str, dgm.Run], args: argparse.Namespace) -> dict[str, Any]:
    """sigma by AIS on 20 training images (dequantized like the test set), then AIS on the test
    images, for the GAN's generator and the grey-level VAE."""
    out = {}
    for name, run in runs.items():
        torch.manual_seed(args.seed)
        x_val = as_evaluated(run.config, run.data.x_train[-20:], 12345)
        val = {}
        for s in WU_SCALES:
            r = ais_log_likelihood(observed(run, s), x_val, 100, 4)
            val[s] = float(r.log_likelihood.mean())
        best = max(val, key=val.get)
        t0 = time.perf_counter()
        x = run.data.x_test[: args.wu_limit]
        r = ais_log_likelihood(observed(run, best), x, args.wu_steps, args.wu_chains)
        ll = r.log_likelihood.double()
        out[name] = {
            "log_likelihood": float(ll.mean()),
            "stderr": float(ll.std() / math.sqrt(ll.numel())),
            "scale": best,
            "validation": {str(k): v for k, v in val.items()},
            "examples": ll.numel(),
            "steps": args.wu_steps,
            "chains": args.wu_chains,
            "acceptance": r.acceptance,
            "s": time.perf_counter() - t0,
        }
    return out


# -- the figure --------------------------------------------------------------------------------


def figure(runs: dict[str, dgm.Run], labels: dict[str, str], path: Path) -> None:
    from dgm.plots import image_grid, save_figure, subplots

    first = next(iter(runs.values()))
    panels = [("training images", torch.bernoulli(first.data.x_train[:36]))]
    panels += [(labels[n], run.sample(36, seed=0, mean=False)) for n, run in runs.items()]
    fig, axes = subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0))
    for ax, (title, images) in zip(axes, panels, strict=True):
        ax.imshow(image_grid(images, nrow=6, scale=1), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title.replace(" (", "\n("), fontsize=8)
        ax.axis("off")
    save_figure(fig, path)


# -- the table ---------------------------------------------------------------------------------


def _ll(r: dict[str, Any]) -> str:
    ll = r.get("ll")
    if ll is None:
        return "—"
    if "log_likelihood" in ll:
        return f"{ll['log_likelihood']:.2f} ± {ll['stderr']:.2f}"
    return f"≥ {ll['elbo']:.2f} ± {ll['stderr']:.2f} (ELBO)"


def table(summary: dict[str, Any]) -> str:
    """The comparison as Markdown (docs/results renders it from docs/measurements/families.json)."""
    head = (
        "| system | ln p(x), nats | FID | KID | precision | recall | two-sample acc. "
        "| label entropy | s per 1,000 samples | parameters | epochs | training s |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for r in summary["systems"].values():
        s = r["quality"]["score"]
        lines.append(
            f"| {r['label']} | {_ll(r)} | {s['fid']:.1f} | {s['kid']:.1f} | {s['precision']:.3f} "
            f"| {s['recall']:.3f} | {s['c2st_accuracy']:.3f} | {s['label_entropy']:.3f} "
            f"| {r['sample_s_per_1000']:.2f} | {r['parameters']:,} | {r['epochs']} "
            f"| {r['train_s']:.0f} |"
        )
    floor = next(iter(summary["systems"].values()))["quality"]["floor"]
    lines.append(
        f"| floor (training images, same n) | — | {floor['fid']:.1f} | {floor['kid']:.1f} "
        f"| {floor['precision']:.3f} | {floor['recall']:.3f} | {floor['c2st_accuracy']:.3f} "
        f"| {floor['label_entropy']:.3f} | — | — | — | — |"
    )
    out = "\n".join(lines)
    by_steps = {n: r["sample_s_by_steps"] for n, r in summary["systems"].items()
                if r.get("sample_s_by_steps")}  # fmt: skip
    if by_steps:
        out += (
            "\n\nThe cost of a sampler with steps, by its number of steps (s per 1,000 "
            "images, timed on a few):\n\n| system | steps | s per 1,000 samples |\n"
            "| --- | ---: | ---: |\n"
        )
        for name, costs in by_steps.items():
            for k, sec in costs.items():
                out += f"| {summary['systems'][name]['label']} | {k} | {sec:.2f} |\n"
        out = out.rstrip("\n")
    wu = summary.get("wu")
    if wu:
        out += (
            "\n\nWu et al. (2017) protocol, dequantized grey levels, AIS under N(mean(z), "
            "sigma^2 I):\n\n| model | ln p(x), nats | sigma | test images | AIS | "
            "Wu et al. Table 2 |\n| --- | ---: | ---: | ---: | --- | ---: |\n"
        )
        for name, r in wu.items():
            paper = WU_PAPER["gan" if name == "gan" else "vae"]
            out += (
                f"| {name} | {r['log_likelihood']:.1f} ± {r['stderr']:.1f} | {r['scale']} "
                f"| {r['examples']} | {r['steps']} steps x {r['chains']} chains | {paper} |\n"
            )
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"systems": {}}
    summary.update(
        {
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}",
            "budget_s": args.budget,
            "n": args.n,
        }
    )
    runs, labels = {}, {}
    for name in args.only or SYSTEMS:
        label, config, overrides = SYSTEMS[name]
        if args.train_limit is not None:
            overrides = {**overrides, "data.train_limit": args.train_limit}
        run_dir = args.out / name
        rows = train_within(run_dir, CONFIGS / config, overrides, args.budget)
        run = dgm.load_run(run_dir)
        runs[name], labels[name] = run, label
        done = summary["systems"].get(name)
        if done is not None and done.get("epochs") == len(rows) and done.get("n") == args.n:
            if "sample_s_by_steps" not in done:  # measured before this column existed
                done["sample_s_by_steps"] = seconds_by_steps(
                    run, args.sampler_steps, args.steps_images
                )
                atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
            continue  # measured at this length already
        summary["systems"][name] = {
            "label": label,
            "epochs": len(rows),
            "train_s": sum(r["epoch_time_s"] for r in rows),
            "parameters": trained_parameters(run.config),
            "ll": log_likelihood(run, args),
            "quality": sample_quality(run, args),
            "sample_s_per_1000": sampling_seconds(run),
            "sample_s_by_steps": seconds_by_steps(run, args.sampler_steps, args.steps_images),
            "n": args.n,
        }
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
        print(f"{name}: measured", flush=True)
    if args.wu and "gan" in runs:
        vae_dir = args.out / "wu_vae"
        wu = {**WU_VAE, **({"data.train_limit": args.train_limit} if args.train_limit else {})}
        train_within(vae_dir, CONFIGS / "mnist_vae.toml", wu, args.budget)
        summary["wu"] = wu_protocol({"gan": runs["gan"], "vae": dgm.load_run(vae_dir)}, args)
    figure(runs, labels, args.out / "families.png")
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    if args.publish:
        shutil.copy(summary_path, ROOT / "docs" / "measurements" / "families.json")
        shutil.copy(args.out / "families.png", ROOT / "docs" / "images" / "families.png")
    print(table(summary))


if __name__ == "__main__":
    main()
