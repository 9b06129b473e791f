r"""The data's likelihood at the end of a diffusion model's reverse chain, p(x_0 | y_1).

A :class:`Decoder` maps data x_0 into the chain's space y_0 and scores x_0 under the reverse
chain's last mean: :class:`BernoulliDecoder` for binarized images (y_0 = +-1),
:class:`DiscretizedGaussianDecoder` for grey levels (Ho et al. 2020, eq. 13: a Gaussian
integrated over each of the 256 bins) and :class:`GaussianDecoder` for real-valued data.
:data:`DECODERS` names them by ``data_kind``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal, constraints


class Decoder(ABC):
    r"""The data's likelihood at t = 0 and the map of data x_0 into the chain's space y_0.

    ``__call__(mu, sigma)`` takes the reverse chain's last mean mu = mu_theta(y_1, 1) ``(B, D)``
    (the predicted y_0) and its scale sigma_1 = sqrt(beta_1), and returns p(x_0 | y_1) with
    event shape ``(D,)``."""

    @abstractmethod
    def to_chain(self, x: Tensor) -> Tensor:
        """Data x_0 ``(B, D)`` -> y_0 ``(B, D)``."""

    @abstractmethod
    def __call__(self, mu: Tensor, sigma: Tensor) -> Distribution:
        """p(x_0 | y_1) from mu ``(B, D)`` and sigma (a scalar tensor)."""


class BernoulliDecoder(Decoder):
    r"""Binary pixels x_0 in {0, 1}, y_0 = 2 x_0 - 1 in {-1, 1}.

    p(x_0 | y_1) is the reverse step N(y_0; mu, sigma_1^2) restricted to the two points
    y_0 = +-1 and renormalized, a Bernoulli with

        logit = log N(1; mu, sigma^2) - log N(-1; mu, sigma^2) = 2 mu / sigma^2,

    the binary analogue of Ho et al.'s discretized decoder (eq. 13) with two bins. With
    sigma_1^2 = beta_1 the logits are large: the noise at t = 1 hardly hides a binary pixel.
    """

    def to_chain(self, x: Tensor) -> Tensor:
        return 2.0 * x - 1.0

    def __call__(self, mu: Tensor, sigma: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=2.0 * mu / sigma**2, validate_args=False), 1, False)


class DiscretizedGaussian(Distribution):
    r"""N(y; loc, scale^2) integrated over the bins of ``bins`` grey levels (Ho et al. eq. 13).

    Values are x = k / (bins - 1), k = 0..bins-1, at y = 2 x - 1 in [-1, 1]; bin k is
    [y - 1/(bins-1), y + 1/(bins-1)], the first extended to -inf and the last to +inf, so

        P(x) = Phi((y_+ - loc) / scale) - Phi((y_- - loc) / scale).

    Elementwise (batch shape that of loc and scale); ``log_prob`` rounds x to its level.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, loc: Tensor, scale: Tensor, bins: int = 256) -> None:
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.bins = bins
        super().__init__(self.loc.shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        levels = self.bins - 1
        k = torch.round(value * levels)
        y = 2.0 * k / levels - 1.0
        a = (y - 1.0 / levels - self.loc) / self.scale  # lower edge, standardized
        b = (y + 1.0 / levels - self.loc) / self.scale  # upper edge
        first = torch.special.log_ndtr(b)  # k = 0: log Phi(b)
        last = torch.special.log_ndtr(-a)  # k = bins - 1: log(1 - Phi(a))
        # an inner bin, reflected into the lower tail when a > 0 (Phi(b) - Phi(a) =
        # Phi(-a) - Phi(-b)): log(Phi(hi) - Phi(lo)) = log Phi(hi) + log(1 - Phi(lo) / Phi(hi))
        upper = a > 0
        lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
        log_hi = torch.special.log_ndtr(hi)
        d = (torch.special.log_ndtr(lo) - log_hi).clamp(max=-torch.finfo(a.dtype).tiny)
        inner = log_hi + torch.log(-torch.expm1(d))
        return torch.where(k <= 0, first, torch.where(k >= levels, last, inner))

    @property
    def mean(self) -> Tensor:
        r"""E[x] = h sum_{k=0}^{bins-2} P(x > k h), h = 1 / (bins - 1)."""
        levels = self.bins - 1
        edges = 2.0 * (torch.arange(levels, dtype=self.loc.dtype, device=self.loc.device) + 0.5)
        edges = edges / levels - 1.0  # (bins - 1,) the upper edges of bins 0..bins-2
        above = torch.special.ndtr((self.loc.unsqueeze(-1) - edges) / self.scale.unsqueeze(-1))
        return above.sum(-1) / levels  # (..., bins - 1) -> (...)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        """A draw y ~ N(loc, scale^2), rounded to its level and clipped to [0, 1]."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            y = self.loc + self.scale * torch.randn(
                shape, dtype=self.loc.dtype, device=self.loc.device
            )
            return torch.round((y + 1.0) / 2.0 * (self.bins - 1)).clamp(0, self.bins - 1) / (
                self.bins - 1
            )


class DiscretizedGaussianDecoder(Decoder):
    r"""Grey levels x_0 = k / (bins - 1) in [0, 1], y_0 = 2 x_0 - 1; p(x_0 | y_1) is
    N(mu, sigma_1^2) over the bins (:class:`DiscretizedGaussian`, Ho et al. eq. 13)."""

    def __init__(self, bins: int = 256) -> None:
        self.bins = bins

    def to_chain(self, x: Tensor) -> Tensor:
        return 2.0 * x - 1.0

    def __call__(self, mu: Tensor, sigma: Tensor) -> Distribution:
        return Independent(DiscretizedGaussian(mu, sigma.expand_as(mu), self.bins), 1, False)


class GaussianDecoder(Decoder):
    r"""Real-valued data, x_0 = y_0: p(x_0 | y_1) = N(x_0; mu, sigma_1^2 I), a density (for
    low-dimensional continuous data)."""

    def to_chain(self, x: Tensor) -> Tensor:
        return x

    def __call__(self, mu: Tensor, sigma: Tensor) -> Distribution:
        return Independent(Normal(mu, sigma.expand_as(mu), False), 1, False)


#: ``data_kind`` names -> decoders
DECODERS: dict[str, type[Decoder]] = {
    "binary": BernoulliDecoder,
    "grey": DiscretizedGaussianDecoder,
    "gaussian": GaussianDecoder,
}
