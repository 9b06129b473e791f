r"""Bounds on log p(x), computed from log-weights log w_k = log p(x, z_k) - log q(z_k | x).

Shapes: log-weights are (K, B), the sample dimension first; every bound returns (B,), in nats
per example. A bound is an object passed to an estimator (:mod:`dgm.estimators`), which says
which bounds it can estimate the gradient of; the functions :func:`elbo` and :func:`iwae` are the
formulas themselves.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch

KL = Literal["analytic", "mc"]


def elbo(log_w: torch.Tensor) -> torch.Tensor:
    r"""The K-sample Monte Carlo ELBO  (1/K) sum_k log w_k,  (K, B) -> (B,)."""
    return log_w.mean(0)


def iwae(log_w: torch.Tensor) -> torch.Tensor:
    r"""The importance-weighted bound  log (1/K) sum_k w_k  (Burda et al. 2015), (K, B) -> (B,).

    For K = 1 it is the ELBO; it increases with K and tends to log p(x).
    """
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


class Bound:
    """Contract: ``bound(log_w (K, B)) -> (B,)``, a lower bound on log p(x) in nats.

    ``name`` is the bound's name in metrics (``train_elbo``, ``test_iwae``) and in configs;
    ``needs`` names what it asks of the posterior beyond samples of z and their log-density (see
    the ``provides`` of :mod:`dgm.variational`'s posteriors).
    """

    name: ClassVar[str]
    title: ClassVar[str]  # in messages: "the ELBO"
    #: False for an objective that is not a bound on log p(x) (the autoencoder's)
    bounds_log_p: ClassVar[bool] = True

    @property
    def needs(self) -> frozenset[str]:
        return frozenset()

    def __call__(self, log_w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


class ELBO(Bound):
    r"""ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)) = E_q[log w]  (the lecture's L).

    ``kl="analytic"``: the KL in closed form (q must provide one), the expectation of
    log p(x | z) by Monte Carlo; ``kl="mc"``: the whole bound by Monte Carlo over log-weights,
    :func:`elbo`. (Kingma and Welling 2014, eq. 7 and 10.)
    """

    name = "elbo"
    title = "the ELBO"

    def __init__(self, kl: KL = "analytic") -> None:
        if kl not in ("analytic", "mc"):
            raise ValueError(f"ELBO(kl=...): expected 'analytic' or 'mc', got {kl!r}")
        self.kl = kl

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"closed_form_kl"}) if self.kl == "analytic" else frozenset()

    def __call__(self, log_w: torch.Tensor) -> torch.Tensor:
        return elbo(log_w)

    def __repr__(self) -> str:
        return f"ELBO(kl={self.kl!r})"


class IWAE(Bound):
    r"""The importance-weighted bound log (1/K) sum_k w_k (Burda et al. 2015, eq. 8):
    :func:`iwae`. Log-weights only, no KL term."""

    name = "iwae"
    title = "the IWAE bound"

    def __call__(self, log_w: torch.Tensor) -> torch.Tensor:
        return iwae(log_w)


class Reconstruction(Bound):
    r"""The plain autoencoder's objective E_q[log p(x | z)] with a point-mass q: no KL, and so
    not a bound on log p(x). Its ``__call__`` takes log p(x | z_k) (K, B), not log-weights."""

    name = "reconstruction"
    title = "the reconstruction objective"
    bounds_log_p = False

    def __call__(self, log_lik: torch.Tensor) -> torch.Tensor:
        return log_lik.mean(0)
