r"""Per-datapoint (non-amortized) posteriors: one (lambda_n, eta_n) per training example.

This is the variational family of the lecture's VB-EM, before amortization: q(z | x_n) =
N(lambda_n, diag(eta_n^2)), a row of an (N, d) table for each of lambda and log eta, looked up by
the example's index. Only the rows of the examples in a batch receive a gradient, and the tables
are sparse parameters (``F.embedding(..., sparse=True)``), so an optimizer such as
``torch.optim.SparseAdam`` updates those rows and leaves every other row, and its moment
estimates, untouched. (Hoffman et al. 2013 call the amortized alternative's problem the "local"
parameters; Kingma and Welling 2014, section 2.1.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent, Normal


class LocalGaussian(nn.Module):
    r"""Tables ``lam`` (N, d) and ``log_eta`` (N, d); ``forward(x, index)`` -> q with batch (B,).

    ``sparse=True`` (the default) makes the gradients sparse, for ``torch.optim.SparseAdam``;
    ``sparse=False`` gives dense gradients, for a dense optimizer over all rows at once.
    """

    def __init__(
        self,
        num_examples: int,
        latent_dim: int,
        init_scale: float = 1.0,
        sparse: bool = True,
    ) -> None:
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.num_examples = num_examples
        self.latent_dim = latent_dim
        self.sparse = sparse
        # every q_n starts at N(0, init_scale^2 I); with init_scale = 1 that is the prior
        self.lam = nn.Parameter(torch.zeros(num_examples, latent_dim))
        self.log_eta = nn.Parameter(torch.full((num_examples, latent_dim), float(init_scale)).log())

    @torch.no_grad()
    def set_rows(self, q: Distribution, index: torch.Tensor | None = None) -> None:
        """Copy a diagonal Gaussian's loc and scale (batch (B,)) into the rows ``index``."""
        index = torch.arange(self.num_examples, device=self.lam.device) if index is None else index
        base = q.base_dist if isinstance(q, Independent) else q
        self.lam[index] = base.loc.to(self.lam)
        self.log_eta[index] = base.scale.log().to(self.log_eta)

    def forward(self, x: torch.Tensor | None, index: torch.Tensor | None = None) -> Distribution:
        if index is None:
            raise ValueError("a per-datapoint posterior needs the examples' indices: q(x, index)")
        lam = F.embedding(index, self.lam, sparse=self.sparse)  # (B, d)
        log_eta = F.embedding(index, self.log_eta, sparse=self.sparse)  # (B, d)
        return Independent(Normal(lam, log_eta.exp(), validate_args=False), 1, validate_args=False)
