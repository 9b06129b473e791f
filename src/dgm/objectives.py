r"""Bounds on log p(x), computed from log-weights log w_k = log p(x, z_k) - log q(z_k | x).

Shapes: log-weights are (K, B), the sample dimension first; every bound returns (B,), in nats
per example.
"""

from __future__ import annotations

import math

import torch


def elbo(log_w: torch.Tensor) -> torch.Tensor:
    r"""The K-sample Monte Carlo ELBO  (1/K) sum_k log w_k,  (K, B) -> (B,)."""
    return log_w.mean(0)


def iwae(log_w: torch.Tensor) -> torch.Tensor:
    r"""The importance-weighted bound  log (1/K) sum_k w_k  (Burda et al. 2015), (K, B) -> (B,).

    For K = 1 it is the ELBO; it increases with K and tends to log p(x).
    """
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
