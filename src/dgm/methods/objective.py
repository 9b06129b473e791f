"""The variational training forward as one module, and the name of a non-finite step's fault."""

from __future__ import annotations

import torch

from dgm.estimators import Estimate


class Objective(torch.nn.Module):
    """The estimator applied to (model, posterior) as one module, for DistributedDataParallel,
    which needs the forward pass to go through it (and for ``torch.compile``); returns the
    fields of :class:`Estimate` in its order, (bound, surrogate, log_lik, kl).

    A per-datapoint table stays outside (``posterior=None``, its q passed to ``forward``): its
    rows are each rank's own, and their gradients must not be averaged across ranks."""

    def __init__(self, model: torch.nn.Module, posterior: torch.nn.Module | None, estimator):
        super().__init__()
        self.model, self.posterior, self.estimator = model, posterior, estimator

    def forward(self, x: torch.Tensor, index: torch.Tensor, kl_weight: float, q=None):
        q = self.posterior(x, index) if q is None else q
        est = self.estimator(self.model, q, x, kl_weight)
        return est.bound, est.surrogate, est.log_lik, est.kl


def data_parallel(objective: Objective, device: torch.device) -> torch.nn.Module:
    """``objective`` under DistributedDataParallel: gradients averaged across ranks."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(objective, device_ids=ids)


def fault_term(est: Estimate, loss: torch.Tensor) -> str:
    """The term at fault in a skipped step: the gradient under a finite loss, else the first
    non-finite one of the log-likelihood, the KL and the loss."""
    if bool(torch.isfinite(loss)):
        return "gradient of the loss"
    if not bool(torch.isfinite(est.log_lik).all()):
        return "expected log-likelihood E_q[log p(x|z)]"
    if not bool(torch.isfinite(est.kl).all()):
        return "KL(q || p)"
    return "loss"
