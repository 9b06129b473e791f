r"""Annealed importance sampling (AIS) of log p(x) for any model with a prior and a decoder, and
bidirectional Monte Carlo (BDMC) bounds on data simulated from the model.

AIS (Neal 2001) anneals from the prior to the posterior through the intermediate densities

    f_t(z) = p(z) p(x | z)^{beta_t},     0 = beta_0 < beta_1 < ... < beta_T = 1,

starting from z ~ p(z) and moving each chain by a Markov transition that leaves f_t invariant
(Hamiltonian Monte Carlo with a Metropolis correction, Neal 2011). The log-weight

    log w = sum_t (beta_t - beta_{t-1}) log p(x | z_{t-1})

has E[w] = p(x), so log (1/C) sum_c w_c over C chains is a stochastic lower bound on log p(x)
that tightens as T grows (Wu et al. 2017 evaluate VAEs and GANs on MNIST this way). Run in
reverse from an exact posterior sample (the z that simulated x), the same chain gives an unbiased
estimate of 1/p(x), so minus its logarithm is a stochastic *upper* bound: BDMC sandwiches the
truth (Grosse et al. 2015, 2016).

Shapes: x (B, D); chains C per example; z (C, B, d); every estimate per example (B,), in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dgm.evaluate import mean_stderr


def sigmoid_schedule(steps: int, rad: float = 4.0) -> torch.Tensor:
    r"""The inverse temperatures beta_0..beta_T (T = ``steps``), 0 to 1 along a sigmoid
    (Grosse et al. 2015; Wu et al. 2017): beta_t = (s(t) - s(0)) / (s(T) - s(0)) with
    s(t) = sigmoid(rad (2 t / T - 1)); dense at both ends, where the density changes fastest."""
    if steps < 1:
        raise ValueError(f"AIS needs at least one intermediate step, got {steps}")
    s = torch.sigmoid(rad * (2 * torch.arange(steps + 1, dtype=torch.float64) / steps - 1))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class AISResult:
    """Per-example log p(x) estimates (B,) and what the chains did."""

    log_likelihood: torch.Tensor  # log (1/C) sum_c w_c: a lower bound (forward) or an upper
    steps: int  # bound (reverse, BDMC) in expectation
    chains: int
    acceptance: float  # mean HMC acceptance rate over steps, chains and examples
    direction: str  # "forward" (from the prior) or "reverse" (from an exact posterior sample)

    def summary(self) -> dict[str, float | int | None | str]:
        mean, se = mean_stderr(self.log_likelihood)
        return {
            "log_likelihood": mean,
            "log_likelihood_stderr": se,
            "n": self.log_likelihood.numel(),
            "steps": self.steps,
            "chains": self.chains,
            "acceptance": self.acceptance,
            "direction": self.direction,
        }


class _Annealing:
    """log p(z) and log p(x | z) of a model at z (C, B, d), and the HMC move at temperature beta."""

    def __init__(self, model: nn.Module, x: torch.Tensor, leapfrog: int, target: float) -> None:
        self.model, self.x, self.leapfrog, self.target = model, x, leapfrog, target

    def terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.prior().log_prob(z), self.model.likelihood(z).log_prob(self.x)

    def energy_and_grad(
        self, z: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U(z) = -(log p(z) + beta log p(x | z)) (C, B), its gradient in z, and log p(x | z)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_prior, log_lik = self.terms(z)
            energy = -(log_prior + beta * log_lik)
            (grad,) = torch.autograd.grad(energy.sum(), z)
        return energy.detach(), grad, log_lik.detach()

    def hmc(
        self, z: torch.Tensor, beta: float, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One HMC transition leaving f_beta invariant; ``eps`` (C, B, 1) the step sizes.
        Returns the new z, its log p(x | z) and the acceptance probabilities (C, B)."""
        u0, g, log_lik0 = self.energy_and_grad(z, beta)
        p0 = torch.randn_like(z)
        zn, p = z, p0 - 0.5 * eps * g
        for i in range(self.leapfrog):
            zn = zn + eps * p
            un, g, log_lik_n = self.energy_and_grad(zn, beta)
            p = p - (eps if i < self.leapfrog - 1 else 0.5 * eps) * g
        log_accept = (u0 + 0.5 * (p0 * p0).sum(-1)) - (un + 0.5 * (p * p).sum(-1))  # (C, B)
        log_accept = torch.nan_to_num(log_accept, nan=-math.inf)
        accept = torch.rand_like(log_accept).log() < log_accept
        z = torch.where(accept.unsqueeze(-1), zn, z)
        log_lik = torch.where(accept, log_lik_n, log_lik0)
        return z, log_lik, log_accept.clamp(max=0.0).exp()

    def adapt(self, eps: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        """Step sizes per chain nudged toward the target acceptance rate (Wu et al. 2017)."""
        factor = torch.where(accepted.unsqueeze(-1) > self.target, 1.02, 0.98)
        return (eps * factor).clamp(1e-4, 1.0)


@torch.no_grad()
def ais_log_likelihood(
    model: nn.Module,
    x: torch.Tensor,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 10,
    step_size: float = 0.05,
    target_acceptance: float = 0.65,
    z_start: torch.Tensor | None = None,
    on_step: Callable[[int], None] | None = None,
) -> AISResult:
    r"""log p(x) of every example in ``x`` (B, D) by AIS with ``chains`` chains of ``steps``
    intermediate distributions (sigmoid schedule) and HMC transitions of ``leapfrog`` steps.

    ``model`` needs ``prior()`` (a Distribution over z, event (d,)) and ``likelihood(z)``.
    With ``z_start`` (B, d), an exact draw from p(z | x) per example (the z that simulated x),
    the chain runs in reverse, from the posterior to the prior, and the result is BDMC's upper
    bound instead of a lower bound.
    """
    schedule = sigmoid_schedule(steps).tolist()
    anneal = _Annealing(model, x, leapfrog, target_acceptance)
    batch = x.shape[0]
    if z_start is None:
        z = model.prior().sample((chains, batch))  # (C, B, d)
        betas, direction = schedule, "forward"
    else:
        z = z_start.unsqueeze(0).expand(chains, *z_start.shape).clone()
        betas, direction = schedule[::-1], "reverse"
    eps = torch.full((chains, batch, 1), step_size, dtype=z.dtype, device=z.device)
    log_w = torch.zeros(chains, batch, dtype=torch.float64, device=z.device)
    _, log_lik = anneal.terms(z)
    accepted_sum = 0.0
    for t in range(1, len(betas)):
        # the weight of moving from beta_{t-1} to beta_t at the current z; reversed, this adds
        # (beta_{t-1} - beta_t) log p(x | z), which estimates -log p(x)
        log_w += (betas[t] - betas[t - 1]) * log_lik.double()
        z, log_lik, accepted = anneal.hmc(z, betas[t], eps)
        eps = anneal.adapt(eps, accepted)
        accepted_sum += accepted.mean().item()
        if on_step is not None:
            on_step(t)
    log_mean_w = torch.logsumexp(log_w, 0) - math.log(chains)  # (B,)
    estimate = log_mean_w if direction == "forward" else -log_mean_w
    return AISResult(estimate, steps, chains, accepted_sum / steps, direction)


@torch.no_grad()
def bdmc(
    model: nn.Module, n: int, steps: int = 1000, chains: int = 16, **options
) -> dict[str, float | int | None]:
    r"""Bidirectional Monte Carlo on ``n`` examples simulated from ``model``: x ~ p(x | z),
    z ~ p(z); forward AIS gives a lower bound on their mean log p(x), reverse AIS from the
    simulating z an upper bound, and their gap bounds the error of AIS at ``steps`` on such
    data (Grosse et al. 2015). Draws use the global RNG."""
    z = model.prior().sample((n,))  # (n, d): an exact posterior sample of the x it simulates
    x = model.likelihood(z).sample()  # (n, D)
    forward = ais_log_likelihood(model, x, steps, chains, **options)
    reverse = ais_log_likelihood(model, x, steps, chains, z_start=z, **options)
    lower, upper = forward.summary(), reverse.summary()
    gap, gap_se = mean_stderr(reverse.log_likelihood - forward.log_likelihood)  # per example
    return {
        "lower": lower["log_likelihood"],
        "lower_stderr": lower["log_likelihood_stderr"],
        "upper": upper["log_likelihood"],
        "upper_stderr": upper["log_likelihood_stderr"],
        "gap": gap,
        "gap_stderr": gap_se,
        "n": n,
        "steps": steps,
        "chains": chains,
        "acceptance": (forward.acceptance + reverse.acceptance) / 2,
    }
