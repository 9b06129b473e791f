r"""What every gradient estimator shares: the :class:`Estimate` it returns, the contract, and
what it declares about the bounds, posteriors and sample sizes it supports.

An estimator takes the model p_theta(x, z), the posterior q_phi(z | x) (a Distribution) and x, and
returns an :class:`Estimate` whose ``bound`` is the Monte Carlo value of its bound (what is logged)
and whose ``surrogate`` has that same value and the estimator's gradient (Pyro's surrogate-loss
idea: ``value + (surrogate - surrogate.detach())``). Training minimizes ``-surrogate.mean()``;
whatever the estimator, what is logged is the true bound.

Estimators are modules because a control variate may carry state (a running mean) or parameters
(NVIL's baseline network); those are trained with the model and saved in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from dgm.distributions import normal_kl
from dgm.objectives import ELBO, Bound


@dataclass
class Estimate:
    """Per-example quantities, each (B,), in nats."""

    bound: torch.Tensor  # the bound's Monte Carlo value
    surrogate: torch.Tensor  # same value, carries the estimator's gradient
    log_lik: torch.Tensor  # (1/K) sum_k log p(x | z_k), the expected reconstruction term
    kl: torch.Tensor  # KL(q || p) (analytic) or its Monte Carlo estimate


class Estimator(nn.Module):
    """Contract: ``forward(model, q, x, kl_weight) -> Estimate``, K samples of z per example.

    Each subclass declares what it supports, and :func:`refusal` reads the declarations:

    - ``bounds``: the bound classes whose gradient it estimates;
    - ``needs``: what it asks of q: ``"rsample"`` (a differentiable path z(eps, phi)) and/or
      ``"log_prob"`` (log q(z | x) at any given z, with its gradient in phi);
    - ``kl_modes``: the ELBO's KL modes it can use (``"analytic"``, ``"mc"``);
    - ``min_k``: the fewest samples per example it is defined for;
    - ``functional``: its forward updates no state of its own (no running baseline), so that the
      training step may run it under ``torch.func`` and compile it whole.
    """

    bounds: ClassVar[tuple[type[Bound], ...]]
    needs: ClassVar[frozenset[str]]
    kl_modes: ClassVar[tuple[str, ...]] = ("analytic", "mc")
    min_k: ClassVar[int] = 1
    functional: ClassVar[bool] = True
    #: a note for the error message when a bound is refused, by bound name
    notes: ClassVar[dict[str, str]] = {}

    def __init__(self, bound: Bound, k: int = 1) -> None:
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        refused = refusal(type(self), bound, k=k)
        if refused is not None:
            raise ValueError(f"{type(self).__name__} {refused.reason}")
        self.bound = bound
        self.k = k

    def extra_repr(self) -> str:
        return f"bound={self.bound!r}, k={self.k}"


@dataclass(frozen=True)
class Refusal:
    """Why a combination is invalid: ``about`` the estimator (its bound, KL mode or K) or the
    posterior (what its q lacks), and the reason, a phrase that follows the subject's name."""

    about: str  # "estimator" or "posterior"
    reason: str


def refusal(
    cls: type[Estimator],
    bound: Bound,
    provides: frozenset[str] | None = None,
    k: int | None = None,
) -> Refusal | None:
    """Why estimator class ``cls`` cannot train ``bound`` with a posterior that ``provides``
    these capabilities and ``k`` samples (None: not checked), or None if it can."""
    if not isinstance(bound, cls.bounds):
        names = " or ".join(f"'{b.name}'" for b in cls.bounds)
        note = cls.notes.get(bound.name)
        return Refusal(
            "estimator",
            f"is not an estimator of {bound.title}'s gradient"
            + (f" ({note})" if note else "")
            + f"; it is for bound = {names}",
        )
    if isinstance(bound, ELBO) and bound.kl not in cls.kl_modes:
        return Refusal("estimator", "works on Monte Carlo log-weights: set kl = 'mc' or 'auto'")
    if k is not None and k < cls.min_k:
        return Refusal("estimator", f"needs k >= {cls.min_k} samples per example (got {k})")
    if provides is not None:
        missing = (cls.needs | bound.needs) - provides
        if "closed_form_kl" in missing:
            return Refusal("posterior", "has no closed-form KL: set objective.kl = 'mc' or 'auto'")
        if "log_prob" in missing:
            return Refusal("posterior", "gives log q(z | x) only along its own samples")
        if missing:
            return Refusal("posterior", f"lacks {', '.join(sorted(missing))}")
    return None


def annealing(kl_weight: float | torch.Tensor) -> bool:
    """Whether the KL weight (beta) may differ from 1. A () tensor always may: the compiled
    whole step passes beta as one during KL warm-up, so that one graph serves every value of it,
    and its value must not be branched on there."""
    return isinstance(kl_weight, torch.Tensor) or kl_weight != 1.0


def free_bits_kl(q: Distribution, p: Distribution, kl: torch.Tensor, lam: float) -> torch.Tensor:
    r"""The KL term of the free-bits objective, per example (B,), for its gradient only.

    Kingma et al. (2016, eq. 15): sum_j max(lam, E_batch[KL_j]); a latent dimension j whose KL,
    averaged over the minibatch, is below ``lam`` nats gets no gradient from the KL. With a
    diagonal-Gaussian q and p the KL_j are per dimension; otherwise the whole KL is one group with
    threshold lam * latent_dim.
    """
    if (
        isinstance(q, Independent)
        and isinstance(q.base_dist, Normal)
        and isinstance(p, Independent)
        and isinstance(p.base_dist, Normal)
    ):
        kl_j = normal_kl(q.base_dist, p.base_dist)  # (B, d)
        active = (kl_j.mean(0) >= lam).detach()  # (d,)
        return (kl_j * active).sum(-1)
    d = q.event_shape[-1]
    return kl * (kl.mean() >= lam * d).detach()
