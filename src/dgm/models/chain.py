r"""Distributions over several stochastic layers z = [z_1, ..., z_L], one Gaussian per layer given
the layer before it in the chain: the prior p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) and the
posterior q(z_1 | x) q(z_2 | z_1) ... (Burda et al. 2015, section 5; Rezende et al. 2014).

The layers are concatenated along the last dimension in the order z_1, ..., z_L whatever the
direction of the chain, so that estimators and bounds see one latent vector and one log-density:
they do not know how many layers there are.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, constraints
from torch.func import functional_call

from dgm.distributions import stop_parameters

_EMPTY = torch.Size()


class ConditionalGaussian(nn.Module):
    r"""N(z; mu(v), diag(sigma(v)^2)) with (mu, log sigma) = net(v): (..., in) -> (..., 2 d)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, v: torch.Tensor) -> Distribution:
        mu, log_sigma = self.net(v).chunk(2, dim=-1)
        return Independent(Normal(mu, log_sigma.exp(), validate_args=False), 1, validate_args=False)


class _StoppedParameters(nn.Module):
    """Calls ``module`` with its parameters detached: gradients reach the input, not phi."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, v: torch.Tensor) -> Distribution:
        params = {n: p.detach() for n, p in self.module.named_parameters()}
        return functional_call(self.module, params, (v,))


class GaussianChain(Distribution):
    r"""p(b_0) prod_i p(b_i | b_{i-1}), each factor a diagonal Gaussian, over concatenated blocks.

    Args:
        first: the distribution of the chain's first block b_0 (event shape (d_0,)).
        conditionals: modules mapping b_{i-1} (..., d_{i-1}) to p(b_i | b_{i-1}) (event (d_i,)).
        sizes: (d_0, d_1, ...), the blocks' sizes in chain order.
        reverse: lay the blocks out last-first (a top-down prior stores z_1 ... z_L, z_1 first).

    Shapes: ``rsample((K,))`` is (K, *batch, sum d_i); ``log_prob(z)`` is z's shape without the
    last dimension.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        first: Distribution,
        conditionals: list[nn.Module],
        sizes: list[int],
        reverse: bool = False,
    ) -> None:
        self.first, self.conditionals = first, conditionals
        self.sizes, self.reverse = list(sizes), reverse
        super().__init__(first.batch_shape, torch.Size([sum(sizes)]), validate_args=False)

    def _join(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(blocks[::-1] if self.reverse else blocks, dim=-1)

    def _split(self, z: torch.Tensor) -> list[torch.Tensor]:
        sizes = self.sizes[::-1] if self.reverse else self.sizes
        blocks = list(z.split(sizes, dim=-1))
        return blocks[::-1] if self.reverse else blocks

    def rsample_and_log_prob(
        self, sample_shape: torch.Size = _EMPTY
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A draw and its log-density in one pass down the chain (each network runs once)."""
        block = self.first.rsample(sample_shape)
        blocks, log_p = [block], self.first.log_prob(block)
        for conditional in self.conditionals:
            factor = conditional(blocks[-1])
            block = factor.rsample()
            blocks.append(block)
            log_p = log_p + factor.log_prob(block)
        return self._join(blocks), log_p

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    @torch.no_grad()
    def conditional_means(self, samples: int) -> torch.Tensor:
        """(samples, *batch, sum d_i): each block's mean given a draw of the block before it
        (the first block's exact mean). Their average over draws is E[z], with less noise than
        an average of draws of z (Rao-Blackwell): a unit whose conditional mean does not vary
        contributes no noise at all."""
        first = self.first.mean.expand(samples, *self.first.mean.shape)
        blocks, means = [self.first.sample((samples,))], [first]
        for conditional in self.conditionals:
            factor = conditional(blocks[-1])
            means.append(factor.mean)
            blocks.append(factor.sample())
        return self._join(means)

    def sample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        blocks = self._split(z)
        log_p = self.first.log_prob(blocks[0])
        for conditional, parent, block in zip(self.conditionals, blocks, blocks[1:], strict=False):
            log_p = log_p + conditional(parent).log_prob(block)
        return log_p

    def stop_parameters(self) -> GaussianChain:
        """The chain with every factor's parameters detached (see ``stop_parameters``)."""
        stopped = [_StoppedParameters(c) for c in self.conditionals]
        return GaussianChain(stop_parameters(self.first), stopped, self.sizes, self.reverse)
