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

    ``shard=(rank, world)`` keeps only the rows of the examples this rank owns, those whose id
    n has n % world == rank (the table's row n // world); ``forward`` and ``set_rows`` take the
    examples' global ids, which must be the rank's own. Data-parallel training gives each rank
    its own examples (see ``TensorBatches(shard_examples=True)``), so that the rows need no
    communication; :func:`gather_rows` and :func:`shard_rows` convert between the shards and
    the whole (N, d) table that checkpoints hold.
    """

    #: what q offers the estimators (see dgm.estimators.base.Estimator)
    provides = frozenset({"rsample", "density", "log_prob", "closed_form_kl"})
    #: a table of rows for the training examples, not a function of x: held-out x need an E-step
    amortized = False

    def __init__(
        self,
        num_examples: int,
        latent_dim: int,
        init_scale: float = 1.0,
        sparse: bool = True,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard {shard}: expected (rank, world) with 0 <= rank < world")
        self.num_examples = num_examples
        self.latent_dim = latent_dim
        self.sparse = sparse
        self.shard = (rank, world)
        rows = len(range(rank, num_examples, world))  # the ids rank, rank + world, ...
        # every q_n starts at N(0, init_scale^2 I); with init_scale = 1 that is the prior
        self.lam = nn.Parameter(torch.zeros(rows, latent_dim))
        self.log_eta = nn.Parameter(torch.full((rows, latent_dim), float(init_scale)).log())

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The table rows of the examples ``index`` (global ids, this rank's own)."""
        world = self.shard[1]
        return index if world == 1 else torch.div(index, world, rounding_mode="floor")

    @torch.no_grad()
    def set_rows(self, q: Distribution, index: torch.Tensor | None = None) -> None:
        """Copy a diagonal Gaussian's loc and scale (batch (B,)) into the examples ``index``
        (default: all this table's examples, in order)."""
        rows = torch.arange(self.lam.shape[0], device=self.lam.device)
        rows = rows if index is None else self.rows(index)
        base = q.base_dist if isinstance(q, Independent) else q
        self.lam[rows] = base.loc.to(self.lam)
        self.log_eta[rows] = base.scale.log().to(self.log_eta)

    def forward(self, x: torch.Tensor | None, index: torch.Tensor | None = None) -> Distribution:
        if index is None:
            raise ValueError("a per-datapoint posterior needs the examples' indices: q(x, index)")
        rows = self.rows(index)
        lam = F.embedding(rows, self.lam, sparse=self.sparse)  # (B, d)
        log_eta = F.embedding(rows, self.log_eta, sparse=self.sparse)  # (B, d)
        return Independent(Normal(lam, log_eta.exp(), validate_args=False), 1, validate_args=False)


def gather_rows(shards: list[torch.Tensor]) -> torch.Tensor:
    """The whole table from the shards of ranks 0..W-1 (``shards[r]`` holds the rows of the
    ids r, r + W, ...): row n of the result is ``shards[n % W][n // W]``."""
    world = len(shards)
    n = sum(s.shape[0] for s in shards)
    full = shards[0].new_empty((n, *shards[0].shape[1:]))
    for rank, shard in enumerate(shards):
        full[rank::world] = shard
    return full


def shard_rows(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s rows of a whole (N, ...) table: those of the ids n % world == rank."""
    return full[rank::world].clone()
