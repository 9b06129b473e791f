"""A point mass (Dirac delta) over vectors: torch.distributions has none."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, constraints


class PointMass(Distribution):
    r"""delta(z - loc) with event shape ``loc.shape[-1:]``.

    ``rsample`` returns ``loc`` (differentiably) expanded to the sample shape; ``log_prob`` is 0 at
    ``loc`` and -inf elsewhere (a density w.r.t. counting measure on the single atom).
    """

    arg_constraints = {"loc": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, validate_args: bool | None = False) -> None:
        self.loc = loc
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return self.loc.expand(self._extended_shape(torch.Size(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        at_loc = (value == self.loc).all(-1)
        return torch.where(at_loc, 0.0, float("-inf")).to(self.loc.dtype)
