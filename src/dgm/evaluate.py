r"""Evaluation: importance-sampled log-likelihood, ELBO and active units on held-out data."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from dgm.distributions import sample_and_log_prob
from dgm.models import DeepLatentModel

#: default number of (sample, example) pairs pushed through the networks at once: a chunk's
#: decoder output (1,000 x 784 floats, 3 MB) stays in the CPU's cache and the Python work per
#: chunk is still small (measured by ``benchmarks/eval_speed.py``)
DEFAULT_PAIRS_PER_PASS = 1000


def mean_stderr(v: torch.Tensor) -> tuple[float, float | None]:
    """The mean of per-example values (N,) and its standard error, std / sqrt(N) (None if N = 1)."""
    v = v.double()
    n = v.numel()
    return v.mean().item(), (v.std(unbiased=True).item() / math.sqrt(n) if n > 1 else None)


@dataclass
class LogLikelihood:
    """Per-example estimates (N,) from k importance samples each, in nats."""

    log_likelihood: torch.Tensor  # log (1/k) sum_i p(x, z_i) / q(z_i | x)
    elbo: torch.Tensor  # (1/k) sum_i log p(x, z_i) / q(z_i | x): an unbiased ELBO estimate
    k: int

    def summary(self) -> dict[str, float | int | None]:
        """Means over examples with their standard errors (see :func:`mean_stderr`)."""
        n = self.log_likelihood.numel()
        ll, ll_se = mean_stderr(self.log_likelihood)
        el, el_se = mean_stderr(self.elbo)
        return {
            "log_likelihood": ll,
            "log_likelihood_stderr": ll_se,
            "elbo": el,
            "elbo_stderr": el_se,
            "k": self.k,
            "n": n,
        }


@torch.no_grad()
def posterior_mean(q: Distribution, samples: int = 100) -> torch.Tensor:
    """E_q[z] (B, d): in closed form when the distribution has one, else a Monte Carlo average."""
    return posterior_mean_and_noise(q, samples)[0]


@torch.no_grad()
def posterior_mean_and_noise(q: Distribution, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E_q[z] (B, d) and the variance of that estimate (B, d): zero in closed form; for a chain of
    layers the average of conditional means (Rao-Blackwellized); for a flow the average of
    ``samples`` draws."""
    try:
        mean = q.mean
        return mean, torch.zeros_like(mean)
    except NotImplementedError:
        pass
    if hasattr(q, "conditional_means"):
        draws = q.conditional_means(samples)  # (S, B, d)
    else:
        draws = sample_and_log_prob(q, samples)[0]  # (S, B, d)
    return draws.mean(0), draws.var(0) / samples


@torch.inference_mode()
def active_units(
    posterior: nn.Module,
    x: torch.Tensor,
    *,
    threshold: float = 0.01,
    batch_size: int = 1000,
    samples: int = 200,
) -> dict[str, Any]:
    r"""Burda et al. (2015, section 5.2): latent unit u is active when A_u = Var_x(E_q[z_u | x])
    exceeds ``threshold`` (0.01). Returns the count, the count per stochastic layer (for a
    posterior that has ``sizes``) and A_u per unit, over the rows of x (N, D).

    Where E_q[z | x] has no closed form it is estimated from ``samples`` draws, and the
    estimates' own variance (whose average over x would otherwise add to A_u: 1 / samples for a
    collapsed unit, a tenth of the threshold at 1,000 draws) is subtracted.
    """
    means, noise = [], []
    for start, x_b in zip(range(0, x.shape[0], batch_size), x.split(batch_size), strict=True):
        q = posterior(x_b, torch.arange(start, start + x_b.shape[0], device=x.device))
        m, v = posterior_mean_and_noise(q, samples)
        means.append(m)
        noise.append(v)
    mean = torch.cat(means).double()  # (N, d)
    activity = mean.var(0, correction=0) - torch.cat(noise).double().mean(0)  # (d,)
    active = activity > threshold
    sizes = list(getattr(posterior, "sizes", [activity.numel()]))
    per_layer = [int(a.sum()) for a in active.split(sizes)]
    return {
        "active_units": int(active.sum()),
        "active_units_per_layer": per_layer,
        "latent_units": int(activity.numel()),
        "unit_activity": activity.tolist(),
    }


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


@torch.inference_mode()
def importance_log_likelihood(
    model: DeepLatentModel,
    posterior: nn.Module,
    x: torch.Tensor,
    k: int,
    *,
    batch_size: int = 100,
    pairs_per_pass: int = DEFAULT_PAIRS_PER_PASS,
    on_batch: Callable[[int], None] | None = None,
) -> LogLikelihood:
    r"""Estimate log p(x_n) = log E_q[p(x_n, z) / q(z | x_n)] for every row of x (N, D).

        log p(x) ~ logsumexp_i (log p(x, z_i) - log q(z_i | x)) - log k,  z_i ~ q(z | x)

    (Burda et al. 2015, eq. 8 with the trained encoder as proposal.) Consistent as k grows and a
    lower bound in expectation for every k. Memory stays bounded: examples go in batches of
    ``batch_size`` and the k samples in chunks so that at most ``pairs_per_pass`` (sample, example)
    pairs go through the networks at once; the log-sum-exp is accumulated across chunks.
    ``on_batch(n_done)`` is called after each batch of examples (for a progress bar). The
    posterior is called as ``posterior(x_b, index)`` with the rows' indices into x, so a
    per-datapoint table fitted to x works as well as an encoder.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    log_px, elbo = [], []
    for start, b in _chunks(x.shape[0], batch_size):
        x_b = x[start : start + b]  # (B, D)
        q = posterior(x_b, torch.arange(start, start + b, device=x.device))  # rows of x
        k_chunk = max(1, pairs_per_pass // b)
        running_lse = torch.full((b,), float("-inf"), device=x.device, dtype=x.dtype)
        running_sum = torch.zeros(b, device=x.device, dtype=torch.float64)
        for _, kc in _chunks(k, k_chunk):
            z, log_q = sample_and_log_prob(q, kc)  # (kc, B, d), (kc, B)
            log_w = model.log_joint(x_b, z) - log_q  # (kc, B)
            running_lse = torch.logaddexp(running_lse, torch.logsumexp(log_w, 0))
            running_sum += log_w.double().sum(0)
        log_px.append(running_lse - math.log(k))
        elbo.append((running_sum / k).to(x.dtype))
        if on_batch is not None:
            on_batch(start + b)
    return LogLikelihood(torch.cat(log_px), torch.cat(elbo), k)


def inference_gaps(
    model: DeepLatentModel,
    posterior: nn.Module,
    x: torch.Tensor,
    *,
    k: int = 5000,
    steps: int = 500,
    lr: float = 0.05,
    elbo_samples: int = 1000,
    batch_size: int = 100,
    on_stage: Callable[[str], None] | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> dict[str, float | int | None]:
    r"""The inference gaps of an amortized posterior on x (Cremer et al. 2018, section 3).

        log p(x) - ELBO[q_encoder] = (log p(x) - ELBO[q*]) + (ELBO[q*] - ELBO[q_encoder])
                                   =  approximation gap   +   amortization gap

    q* is the best diagonal Gaussian per example, found by ``steps`` Adam steps on each
    (lambda_n, eta_n) started from the encoder's (:func:`dgm.estep.fit_local_posterior`);
    log p(x) is importance-sampled with k samples from q*, the better proposal of the two (a
    stochastic lower bound either way, so it can only understate the approximation gap and
    overstate nothing else); both ELBOs are estimated with
    ``elbo_samples`` samples each. Everything is in nats per example, averaged over x's rows, with
    paired standard errors for the gaps.

    Progress: ``on_stage(stage)`` is called as each of the four stages starts, and
    ``on_batch(stage, n_done)`` after each batch of examples within it (for progress bars).
    """
    from dgm.estep import fit_local_posterior

    def stage(name: str) -> Callable[[int], None] | None:
        if on_stage is not None:
            on_stage(name)
        return None if on_batch is None else (lambda done: on_batch(name, done))

    progress = stage(f"optimizing q per example, {steps} steps")
    optimized = fit_local_posterior(model, x, steps=steps, lr=lr, init=posterior, on_batch=progress)
    progress = stage(f"log p(x), k = {k}")
    ll = importance_log_likelihood(model, optimized, x, k, batch_size=batch_size, on_batch=progress)
    progress = stage(f"the encoder's ELBO, {elbo_samples} samples")
    el_amortized = importance_log_likelihood(model, posterior, x, elbo_samples, on_batch=progress)
    progress = stage(f"the optimized ELBO, {elbo_samples} samples")
    el_amortized = el_amortized.elbo
    el_optimized = importance_log_likelihood(model, optimized, x, elbo_samples, on_batch=progress)
    el_optimized = el_optimized.elbo
    n = x.shape[0]
    out: dict[str, float | int | None] = {}
    for name, v in (
        ("log_likelihood", ll.log_likelihood),
        ("elbo_amortized", el_amortized),
        ("elbo_optimized", el_optimized),
        ("amortization_gap", el_optimized - el_amortized),
        ("approximation_gap", ll.log_likelihood - el_optimized),
        ("inference_gap", ll.log_likelihood - el_amortized),
    ):
        out[name], out[f"{name}_stderr"] = mean_stderr(v)
    out.update({"k": k, "steps": steps, "lr": lr, "elbo_samples": elbo_samples, "n": n})
    return out
