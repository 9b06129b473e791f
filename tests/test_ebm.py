"""The deep energy-based model (dgm.models.ebm, dgm.methods.energy): Langevin dynamics against
the closed form of its stationary law on a Gaussian energy, and the replay buffer's method."""

import math

import torch
from torch import nn

from dgm.methods.energy import LangevinMethod
from dgm.models.ebm import ConvEnergy, EnergyModel, langevin


class Quadratic(nn.Module):
    """E(x) = |x - m|^2 / (2 s^2): the energy of N(m, s^2 I)."""

    def __init__(self, m: float, s: float) -> None:
        super().__init__()
        self.m, self.s = m, s
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return ((x - self.m) ** 2).sum(-1) / (2 * self.s**2) + 0 * self.dummy


def test_langevin_leaves_the_gaussian_law_of_its_step_invariant():
    """The unadjusted Langevin step x - eps grad E + sqrt(2 eps) xi on N(m, s^2) has the
    stationary law N(m, s^2 / (1 - eps / (2 s^2))) exactly: started there, it stays (mean and
    variance within their standard errors), and started elsewhere it gets there."""
    torch.manual_seed(0)
    m, s, eps = 0.3, 0.5, 0.05
    v = s**2 / (1 - eps / (2 * s**2))
    energy = Quadratic(m, s).double()
    n = 20_000
    start = m + math.sqrt(v) * torch.randn(n, 2, dtype=torch.float64)
    far = torch.full((n, 2), 3.0, dtype=torch.float64)
    for x0, steps in ((start, 20), (far, 400)):
        x = langevin(energy, x0, steps, eps, math.sqrt(2 * eps), clamp=None)
        mean_se, var_se = math.sqrt(v / (2 * n)), v * math.sqrt(2 / (2 * n))
        assert abs(x.mean().item() - m) < 4 * mean_se
        assert abs(x.var().item() - v) < 4 * var_se
    # the law of the step is not the energy's own: s^2 = 0.25 against 0.2632
    assert abs(x.var().item() - s**2) > 4 * var_se


def test_the_method_steps_and_writes_its_negatives_back_into_the_buffer():
    torch.manual_seed(0)
    model = EnergyModel(ConvEnergy(4))
    method = LangevinMethod(model, langevin_steps=3, buffer_size=30, reinit=0.0)
    before = method.buffer.x.clone()
    x = torch.rand(8, 784)
    (outcome,) = method.step(x, torch.arange(8), 0)
    assert set(outcome.metrics) == {"contrast", "energy"}
    changed = (method.buffer.x != before).any(-1)
    assert int(changed.sum()) == 8  # the 8 distinct slots drawn moved on, no other
    assert method.buffer.x.min() >= 0 and method.buffer.x.max() <= 1
    assert set(method.evaluate(x)) == {"test_energy", "test_buffer_energy"}


def test_training_lowers_the_energy_of_data_against_the_buffer():
    """A few steps on one fixed image: E(data) falls below E(negatives)."""
    torch.manual_seed(0)
    model = EnergyModel(ConvEnergy(4), step_size=1.0, noise=0.01)
    method = LangevinMethod(model, langevin_steps=5, buffer_size=64, lr=1e-3, alpha=0.1)
    x = torch.zeros(16, 784)
    x[:, 300:400] = 1.0
    for step in range(40):
        method.step(x, torch.arange(16), step)
    r = method.evaluate(x)
    assert r["test_energy"] < r["test_buffer_energy"]
