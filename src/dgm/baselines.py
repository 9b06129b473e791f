r"""Control variates for the score-function estimator.

The score-function gradient (1/K) sum_k grad log q(z_k) f_k stays unbiased when f_k is replaced
by f_k - b_k, for any b_k that does not depend on z_k, because E_q[grad log q(z)] = 0. A good b_k
is close to f_k, which removes most of the variance. Each baseline here maps the detached signal
f (K, B) and the input x (B, D) to b (K, B) and an auxiliary loss (0 for all but the learned one):

- :class:`RunningMean`: an exponential moving average of the signal over steps (Williams 1992);
- :class:`LearnedBaseline`: NVIL's input-dependent b(x) = c + b_psi(x), an MLP trained to regress
  the signal, on top of a running mean c (Mnih and Gregor 2014, section 3.3);
- :class:`LeaveOneOut`: with K > 1 samples, b_k = mean of the other K - 1 signals (Mnih and Rezende
  2016; Kool et al. 2019). It needs no parameters or state and adapts per example.
"""

from __future__ import annotations

import torch
from torch import nn

from dgm.nn import MLP


class Baseline(nn.Module):
    """Contract: ``forward(f (K, B), x (B, D)) -> (b (K, B), aux_loss scalar)``; b is detached.

    ``aux_loss`` is minimized alongside the training loss (its gradient reaches only the
    baseline's own parameters). Stateful baselines update their state only in training mode.
    """

    def forward(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class RunningMean(Baseline):
    r"""b = c, with c <- decay c + (1 - decay) mean(f) after each training step (starts at the
    first batch's mean)."""

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("c", torch.zeros(()))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def update(self, value: torch.Tensor) -> None:
        with torch.no_grad():
            value = value.to(self.c)
            new = torch.where(self.started, self.decay * self.c + (1 - self.decay) * value, value)
            self.c.copy_(new)
            self.started.fill_(True)

    def forward(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (K, B): a copy of the state from before this step, so that the update below (which
        # contains f_k) cannot leak into the baseline subtracted from f_k
        b = self.c.detach().clone().to(f).expand_as(f)
        if self.training:
            self.update(f.mean())
        return b, f.new_zeros(())


class LearnedBaseline(Baseline):
    r"""NVIL: b(x) = c + b_psi(x), b_psi an MLP fitted by least squares to the centred signal.

    aux_loss = mean over (k, n) of (f_kn - c - b_psi(x_n))^2; c is the running mean of
    f - b_psi(x). (Mnih and Gregor 2014: one tanh hidden layer of 100 units.)
    """

    def __init__(self, data_dim: int, hidden: int = 100, decay: float = 0.9) -> None:
        super().__init__()
        self.net = MLP(data_dim, [hidden], 1, "tanh")
        self.centre = RunningMean(decay)
        with torch.no_grad():  # start at b_psi = 0: the running mean alone
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()

    def forward(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b_psi = self.net(x).squeeze(-1)  # (B,)
        c = self.centre.c.detach().clone().to(f)  # the state from before this step
        aux = ((f - c - b_psi) ** 2).mean()  # f is detached: only psi learns from this
        b = (c + b_psi.detach()).expand_as(f)  # (K, B), independent of this step's samples
        if self.training:
            self.centre.update((f - b_psi.detach()).mean())
        return b, aux


class LeaveOneOut(Baseline):
    r"""b_k = (sum_j f_j - f_k) / (K - 1): each sample's baseline from the other K - 1."""

    def forward(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = f.shape[0]
        if k < 2:
            raise ValueError("the leave-one-out baseline needs K >= 2 samples per example")
        b = (f.sum(0, keepdim=True) - f) / (k - 1)  # (K, B)
        return b, f.new_zeros(())
