r"""Flow posteriors: q(z_L | x) is a diagonal Gaussian q_0(z_0 | x) pushed through L flow steps
whose parameters the encoder computes from x (Rezende and Mohamed 2015; Kingma et al. 2016; van
den Berg et al. 2018):

    log q(z_L | x) = log q_0(z_0 | x) - sum_l log|det dz_l / dz_{l-1}|.

The density is known along the flow's own samples (``rsample_and_log_prob``); ``log_prob`` at a
given z needs every step's inverse.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, constraints

from dgm.flows import IAFStep, PlanarStep, RadialStep, SylvesterStep

_EMPTY = torch.Size()


class FlowPosterior(Distribution):
    """q_0 (Independent Normal, batch (B,)) followed by ``steps`` with the encoder's context h."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, base: Distribution, steps: nn.ModuleList, h: torch.Tensor) -> None:
        self.base, self.steps, self.h = base, steps, h
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size = _EMPTY
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.base.rsample(sample_shape)  # (K, B, d)
        log_q = self.base.log_prob(z)  # (K, B)
        for step in self.steps:
            z, log_det = step(z, self.h)
            log_q = log_q - log_det
        return z, log_q

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Inverts the steps one by one (no gradient); NotImplementedError for a step without an
        inverse (Sylvester)."""
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for step in reversed(self.steps):
            if not hasattr(step, "inverse"):
                raise NotImplementedError(
                    f"{type(step).__name__} has no inverse: log q(z) at a given z is unknown"
                )
            z_prev = step.inverse(z, self.h)
            _, ld = step(z_prev, self.h)
            log_det, z = log_det + ld, z_prev
        return self.base.log_prob(z) - log_det


def build_flow_steps(name: str, steps: int, latent_dim: int, context_dim: int) -> nn.ModuleList:
    if name == "planar":
        return nn.ModuleList(PlanarStep(latent_dim, context_dim) for _ in range(steps))
    if name == "radial":
        return nn.ModuleList(RadialStep(latent_dim, context_dim) for _ in range(steps))
    if name == "iaf":
        return nn.ModuleList(
            IAFStep(latent_dim, context_dim, reverse=i % 2 == 1) for i in range(steps)
        )
    if name == "sylvester":
        return nn.ModuleList(SylvesterStep(latent_dim, context_dim) for _ in range(steps))
    raise ValueError(f"unknown flow {name!r}")


class FlowEncoder(nn.Module):
    r"""x -> trunk -> context h (B, C); h -> (lambda, log eta) of q_0 and, per step, the step's
    parameters. ``forward(x, index)`` returns a :class:`FlowPosterior` (batch (B,), event (d,))."""

    #: what q offers the estimators (see dgm.estimators.base.Estimator)
    provides = frozenset({"rsample", "density"})

    def __init__(self, trunk: nn.Module, context_dim: int, latent_dim: int, steps: nn.ModuleList):
        super().__init__()
        self.trunk = trunk
        self.base = nn.Linear(context_dim, 2 * latent_dim)
        self.steps = steps
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        h = self.trunk(x)  # (B, C)
        lam, log_eta = self.base(h).chunk(2, dim=-1)  # (B, d) each
        base = Independent(Normal(lam, log_eta.exp(), validate_args=False), 1, validate_args=False)
        return FlowPosterior(base, self.steps, h)
