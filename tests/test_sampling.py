"""The no-gradient sampler of evaluation: the same draws as q.sample and the same log q(z)."""

from __future__ import annotations

import torch
from torch.distributions import Independent, Normal

from dgm.distributions import sample_and_log_prob


def test_diagonal_gaussian_draws_and_log_density_are_torchs():
    """For z = mu + sigma eps, log q(z) from eps equals q.log_prob(z), and the draws are the ones
    q.sample makes from the same seed (so estimates stay reproducible across the rewrite)."""
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3
    scale = torch.rand(6, 4, generator=g, dtype=torch.float64) * 2 + 1e-3
    q = Independent(Normal(loc, scale), 1)
    torch.manual_seed(1)
    z, log_q = sample_and_log_prob(q, 9)
    torch.manual_seed(1)
    z_ref = q.sample((9,))
    assert z.shape == (9, 6, 4) and log_q.shape == (9, 6)
    torch.testing.assert_close(z, z_ref, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(log_q, q.log_prob(z), rtol=1e-12, atol=1e-12)
