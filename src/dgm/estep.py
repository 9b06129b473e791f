r"""The E-step of VB-EM: fit a fresh q_n = N(lambda_n, diag(eta_n^2)) per example, theta frozen.

    phi_n* = argmax_{phi_n} E_{q_n}[log p_theta(x_n | z)] - KL(q_n || p(z))

Used to evaluate per-datapoint models on test data (which have no trained rows) and to measure
the amortization gap: started from an encoder's q(z | x_n), the optimized ELBO minus the
encoder's ELBO is what amortization costs (Cremer et al. 2018, "Inference Suboptimality in
Variational Autoencoders").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dgm.estimators import Reparameterized
from dgm.objectives import ELBO
from dgm.variational.local import LocalGaussian


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Switch off ``requires_grad`` on ``module``'s parameters for the duration; restore after."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def held_out_posterior(
    model: nn.Module,
    posterior: nn.Module,
    x: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    shard: tuple[int, int] = (0, 1),
) -> nn.Module:
    """The q used on held-out x: an amortized posterior itself; for a per-datapoint table
    (``amortized = False``: it has rows for the training examples only) a fresh E-step fit of
    a q per example with theta frozen (see :func:`fit_local_posterior`)."""
    if getattr(posterior, "amortized", True):
        return posterior
    return fit_local_posterior(model, x, steps=steps, lr=lr, batch_size=batch_size, shard=shard)


def fit_local_posterior(
    model: nn.Module,
    x: torch.Tensor,
    *,
    steps: int,
    lr: float = 1e-2,
    k: int = 1,
    init: nn.Module | None = None,
    batch_size: int = 1000,
    on_batch: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> LocalGaussian:
    r"""Maximize each example's ELBO over its own (lambda_n, log eta_n) with Adam, theta frozen.

    x (N, D) -> a :class:`LocalGaussian` with N rows, started at the prior or, with ``init`` (an
    amortized posterior), at init's q(z | x_n). ``steps`` Adam steps of the reparameterized
    K-sample ELBO (analytic KL), the learning rate annealed from ``lr`` to 0 on a cosine
    (Loshchilov and Hutter 2017): a constant rate would leave each q_n jittering around its
    optimum by about ``lr``, which biases the optimized ELBO down. Examples are optimized in
    chunks of ``batch_size``; because each example's objective is separate and Adam acts per
    coordinate, chunking changes nothing but memory. The RNG is the global torch one (seed it
    for reproducible fits). With ``shard=(rank, world)`` only the examples n % world == rank
    are fitted, into a table sharded alike (``LocalGaussian(shard=...)``: it answers for those
    examples' global ids).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    table = LocalGaussian(x.shape[0], model.latent_dim, sparse=False, shard=shard)
    table = table.to(device=x.device, dtype=x.dtype)
    rank, world = shard
    x = x[rank::world] if world > 1 else x  # the table's examples, in its rows' order
    n = x.shape[0]
    estimator = Reparameterized(ELBO(kl="analytic"), k=k)
    was_training = model.training
    model.eval()
    with frozen(model):
        for start in range(0, n, batch_size):
            index = torch.arange(start, min(start + batch_size, n), device=x.device)  # (B,)
            x_b = x[index]
            chunk = LocalGaussian(index.numel(), model.latent_dim, sparse=False).to(x)
            if init is not None:
                with torch.no_grad():
                    chunk.set_rows(init(x_b, index))
            local_index = torch.arange(index.numel(), device=x.device)
            optimizer = torch.optim.Adam(chunk.parameters(), lr=lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
            for _ in range(steps):
                est = estimator(model, chunk(x_b, local_index), x_b)
                # sum, not mean: each row's gradient is its own example's, whatever the chunk size
                loss = -est.surrogate.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            with torch.no_grad():
                table.lam[index] = chunk.lam
                table.log_eta[index] = chunk.log_eta
            if on_batch is not None:
                on_batch(int(index[-1]) + 1)
    model.train(was_training)
    return table
