r"""Observation models p(x | z): heads that turn a decoder's output into a distribution over x.

A likelihood is an object passed to the model (DESIGN rule 8), never a string switch inside it.
Each keeps its normalizing constant, so ``log_prob`` is a true log-density (or log-mass) in nats,
summed over the ``D`` pixels: the shapes are ``h (..., param_size(D)) -> Distribution`` with
``batch_shape = h.shape[:-1]`` and ``event_shape = (D,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

import dgm.kernels as kernels
from dgm.precision import autocast_off


class Likelihood(nn.Module):
    """Contract: ``param_size(D)`` numbers per example in; a distribution, event shape (D,), out."""

    def param_size(self, data_dim: int) -> int:
        raise NotImplementedError

    def forward(self, h: torch.Tensor) -> Distribution:  # (..., P) -> event (D,)
        raise NotImplementedError

    def output_bias(self, x_mean: torch.Tensor) -> torch.Tensor:
        """Decoder output bias that makes p(x | z) match the data's mean when the weights are 0."""
        raise NotImplementedError


class IndependentBernoulli(Independent):
    r"""``Independent(Bernoulli(logits=h), 1)`` whose ``log_prob`` is one sum over the event:

        log p(x | h) = sum_d x_d h_d - softplus(h_d)        (the same value as torch's)

    Shapes: logits h (..., D), x broadcastable to them, log_prob (...,).
    """

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r"""log p(x | h) = sum_d x_d h_d - softplus(h_d): x (..., D) -> (...,)."""
        h = self.base_dist.logits
        dtype = torch.promote_types(h.dtype, value.dtype)  # as torch's Bernoulli promotes
        h, value = h.to(dtype), value.to(dtype)
        # in the input's precision even under autocast (which would take vecdot to bfloat16)
        with autocast_off(h.device.type):
            if torch.compiler.is_compiling():  # train.compile: the formula, fused there
                return torch.linalg.vecdot(value, h) - F.softplus(h).sum(-1)
            # the same function by the kernels: training with the gradient written out,
            # evaluation in the product-of-sigmoids form (dgm.kernels, tested against the formula)
            if torch.is_grad_enabled():
                return kernels.BernoulliLogMass.apply(h, value)
            return kernels.bernoulli_log_mass(h, value)

    def expand(self, batch_shape: torch.Size, _instance=None) -> IndependentBernoulli:  # noqa: ANN001
        logits = self.base_dist.logits
        return IndependentBernoulli(logits.expand(*batch_shape, *logits.shape[-1:]))


class BernoulliLikelihood(Likelihood):
    r"""p(x | z) = prod_d Bernoulli(x_d; sigmoid(h_d)), with h the decoder's logits."""

    def param_size(self, data_dim: int) -> int:
        return data_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        return IndependentBernoulli(h)

    def output_bias(self, x_mean: torch.Tensor) -> torch.Tensor:
        return torch.logit(x_mean.clamp(1e-3, 1 - 1e-3))  # (D,)


class GaussianLikelihood(Likelihood):
    r"""p(x | z) = N(x; mu(z), sigma^2 I) with a fixed sigma (the lecture's choice is sigma = 1).

    log p(x|z) = -D/2 log(2 pi sigma^2) - ||x - mu(z)||^2 / (2 sigma^2): the constant is kept.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)

    def param_size(self, data_dim: int) -> int:
        return data_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        return Independent(Normal(h, self.scale, validate_args=False), 1, validate_args=False)

    def output_bias(self, x_mean: torch.Tensor) -> torch.Tensor:
        return x_mean.clone()  # (D,)


class LearnedGaussianLikelihood(Likelihood):
    r"""p(x | z) = N(x; mu(z), diag(sigma(z)^2)): the decoder outputs the mean and the scale.

    sigma = softplus(h_sigma) + min_scale; the floor keeps the density bounded on pixels that never
    vary (MNIST's borders), where a free variance would collapse to zero and the likelihood diverge.
    (Kingma and Welling 2014, appendix C.2.)
    """

    def __init__(self, min_scale: float = 1e-2) -> None:
        super().__init__()
        self.min_scale = float(min_scale)

    def param_size(self, data_dim: int) -> int:
        return 2 * data_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        mu, h_sigma = h.chunk(2, dim=-1)  # (..., D) each
        sigma = F.softplus(h_sigma) + self.min_scale
        return Independent(Normal(mu, sigma, validate_args=False), 1, validate_args=False)

    def output_bias(self, x_mean: torch.Tensor) -> torch.Tensor:
        # mean x_mean; sigma starts at softplus(0) + min_scale, as with a zero bias
        return torch.cat([x_mean, torch.zeros_like(x_mean)])  # (2 D,)


class IsotropicGaussianLikelihood(Likelihood):
    r"""p(x | z) = N(x; mu(z), sigma^2 I) with one learned sigma shared by all pixels and inputs.

    With a linear decoder mu(z) = W z + b this is probabilistic PCA's likelihood, so the deep
    model trained by VB can be compared with PPCA's exact maximum likelihood (Tipping and Bishop
    1999; Lucas et al. 2019 show the linear VAE's ELBO optimum is PPCA's). sigma = exp(log_sigma)
    with log_sigma a parameter of this head, started at ``init_scale``.
    """

    def __init__(self, init_scale: float = 1.0) -> None:
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.log_sigma = nn.Parameter(torch.tensor(float(init_scale)).log())

    def param_size(self, data_dim: int) -> int:
        return data_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        sigma = self.log_sigma.exp().to(h).expand_as(h)
        return Independent(Normal(h, sigma, validate_args=False), 1, validate_args=False)

    def output_bias(self, x_mean: torch.Tensor) -> torch.Tensor:
        return x_mean.clone()  # (D,)
