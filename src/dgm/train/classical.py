r"""Fitting the classical models (PPCA, GMM) by exact EM, with exact test log-likelihoods.

The data are dequantized grey levels x = (pixel + u) / 256 in [0, 1)^D: the training set is
dequantized once (seed ``data.binarize_seed + 1``), since EM works on a fixed data set, and the
test set exactly as for the deep models (seed ``data.binarize_seed``). So a PPCA, a GMM and a
VAE with a Gaussian likelihood on the same config report log p(x) in the same units: nats per
example on [0, 1)^D, and bits per dimension (D log 256 - log p(x)) / (D log 2), an upper bound on
the discrete pixels' code length (Theis et al. 2016).

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per EM iteration, then the
test line), ``model.safetensors`` (the fitted parameters) and ``samples.png``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import dgm.manifest as manifest
from dgm.config import Config
from dgm.data import dequantize_fixed
from dgm.errors import CheckpointError, ConfigError
from dgm.evaluate import mean_stderr
from dgm.files import atomic_write, atomic_write_text
from dgm.models import PPCA, GaussianMixture
from dgm.plots import save_grid
from dgm.train.loop import Data, load_data, resolve_device

WEIGHTS = "model.safetensors"


def bits_per_dim(log_px: float, data_dim: int) -> float:
    """(D log 256 - log p(x)) / (D log 2) for a density on [0, 1)^D of 256-level data."""
    return (data_dim * math.log(256) - log_px) / (data_dim * math.log(2))


def classical_data(config: Config, device: torch.device) -> tuple[Data, torch.Tensor]:
    """The run's data and its training set dequantized once, in float64."""
    data = load_data(config, device)
    x_train = dequantize_fixed(data.x_train, config.data.binarize_seed + 1).double()
    return data, x_train


def fit_classical(
    config: Config, on_iter: Callable[[int, float], None] | None = None
) -> tuple[PPCA | GaussianMixture, list[float], Data]:
    """Fit the config's PPCA or GMM to the training set; return it, the EM history and data."""
    device = resolve_device(config.train.device)
    data, x = classical_data(config, device)
    mc, em = config.model, config.em
    n, d = x.shape
    if mc.kind == "ppca" and not 1 <= mc.latent_dim < d:
        raise ConfigError(f"model.latent_dim = {mc.latent_dim}: PPCA needs 1 <= q < D = {d}")
    if mc.kind == "gmm" and mc.components > n:
        raise ConfigError(
            f"model.components = {mc.components}: more components than the {n} training examples"
        )
    if mc.kind == "ppca":
        if em.method == "closed-form":
            model = PPCA.fit_closed_form(x, mc.latent_dim)
            history = [model.average_log_likelihood(x)]
            if on_iter is not None:
                on_iter(0, history[0])
        else:
            model, history = PPCA.fit_em(
                x, mc.latent_dim, max_iter=em.max_iter, tol=em.tol,
                seed=config.train.seed, on_iter=on_iter,
            )  # fmt: skip
    else:
        model, history = GaussianMixture.fit_em(
            x,
            mc.components,
            covariance_type=mc.covariance,
            reg_covar=mc.reg_covar,
            max_iter=em.max_iter,
            tol=em.tol,
            seed=config.train.seed,
            on_iter=on_iter,
        )
    return model, history, data


@torch.no_grad()
def test_log_likelihood(model: PPCA | GaussianMixture, x_test: torch.Tensor) -> dict[str, Any]:
    """Exact log p(x) on the test set: mean, standard error, bits per dimension."""
    log_px = torch.cat([model.log_prob(x.double()) for x in x_test.split(1000)])  # (N,)
    mean, stderr = mean_stderr(log_px)
    return {
        "test_log_likelihood": mean,
        "test_log_likelihood_stderr": stderr,
        "test_bits_per_dim": bits_per_dim(mean, x_test.shape[1]),
        "n": log_px.numel(),
    }


def classical_samples(model: PPCA | GaussianMixture, n: int) -> torch.Tensor:
    """(n, D) images to look at: PPCA's noise-free means W z + mu (its isotropic noise would
    hide them), a GMM's samples x ~ p(x | z)."""
    _, x = model.sample(n)
    return (x.mean if isinstance(model, PPCA) else x).float().clamp(0, 1)


def save_classical(model: PPCA | GaussianMixture, path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda p: save_file(tensors, str(p)))


def load_classical(config: Config, path: Path) -> PPCA | GaussianMixture:
    """Rebuild a fitted model from its safetensors file (nothing is unpickled)."""
    try:
        t = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (has the run finished fitting?)") from None
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from None
    return classical_model(config, t, path)


def classical_model(
    config: Config, t: dict[str, torch.Tensor], path: Path
) -> PPCA | GaussianMixture:
    """The PPCA or GMM of ``config`` with the fitted tensors ``t`` (read from ``path``)."""
    try:
        if config.model.kind == "ppca":
            return PPCA(t["W"], t["mu"], t["sigma2"])
        cov = t["scale_tril"] if config.model.covariance == "full" else t["variances"]
        return GaussianMixture(t["weights"], t["means"], cov, config.model.covariance)
    except (KeyError, ValueError, RuntimeError) as err:
        kind = config.model.kind
        raise CheckpointError(f"{path}: does not hold a {kind} model ({err})") from None


def run_classical(
    config: Config,
    run_dir: Path,
    on_iter: Callable[[dict[str, Any]], None] | None = None,
    force: bool = False,
    on_removed: Callable[[list[Path]], None] | None = None,
) -> dict[str, Any]:
    """Fit, evaluate exactly on the test set, and only then create the run directory and write
    its files: a fit that fails (a singular covariance, say) leaves nothing behind."""
    from dgm.train.run import METRICS, check_new_run, prepare_new_run

    check_new_run(run_dir, force=force)

    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    def record(t: int, ll: float) -> None:
        row = {"iteration": t, "train_log_likelihood": ll, "time_s": time.perf_counter() - start}
        rows.append(row)
        if on_iter is not None:
            on_iter(row)

    model, history, data = fit_classical(config, record)
    result = {
        "model": config.model.kind,
        "iterations": len(history) - 1,
        "train_log_likelihood": history[-1],
        "fit_time_s": time.perf_counter() - start,
        **test_log_likelihood(model, data.x_test),
    }
    removed = prepare_new_run(config, run_dir, force=force)
    if removed and on_removed is not None:
        on_removed(removed)
    save_classical(model, run_dir / WEIGHTS)
    lines = "".join(json.dumps(r) + "\n" for r in [*rows, result])
    atomic_write_text(run_dir / METRICS, lines)
    torch.manual_seed(config.train.seed)
    save_grid(classical_samples(model, 64), run_dir / "samples.png", data.image_shape)
    manifest.record(run_dir, run_dir / WEIGHTS, run_dir / METRICS, run_dir / "samples.png")
    return result
