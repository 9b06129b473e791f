"""Property tests for the flow steps (``dgm.flows``), MADE (``dgm.nn``) and the flow posterior.

Everything runs in float64 with parameters re-drawn far from the identity (``randomize``); the
global seed is fixed by ``conftest.py``. Shapes: z (K, B, d), context h (B, C).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.distributions import MultivariateNormal

from dgm.flows import IAFStep, PlanarStep, RadialStep, SylvesterStep
from dgm.nn import MADE
from dgm.variational.flows import FlowEncoder, FlowPosterior, build_flow_steps

F64 = torch.float64
STEPS = {"planar": PlanarStep, "radial": RadialStep, "iaf": IAFStep, "sylvester": SylvesterStep}
INVERTIBLE = ["planar", "radial", "iaf"]


def randomize(module: nn.Module, std: float = 0.5) -> nn.Module:
    """Re-draw every parameter N(0, std^2) and cast to float64. The invertibility constraints
    (planar w^T u_hat > -1, radial beta > -alpha, IAF sigma in (0, 1), Sylvester |R_ii| < 1) are
    enforced by the parametrizations, so they hold for any parameter values."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module.double()


def make_step(name: str, d: int, c: int) -> nn.Module:
    return randomize(STEPS[name](d, c))


def make_posterior(
    name: str, steps: int = 3, d: int = 2, c: int = 4, b: int = 2, std: float = 0.5
) -> FlowPosterior:
    """A FlowEncoder (identity trunk) with random flow steps, applied to a random context h (B, C);
    the base q_0 keeps nn.Linear's default init (means and log-scales of order 1)."""
    flow = randomize(build_flow_steps(name, steps, d, c), std)
    encoder = FlowEncoder(nn.Identity(), c, d, flow).double()
    return encoder(torch.randn(b, c, dtype=F64))


@pytest.mark.parametrize("name", list(STEPS))
def test_log_det_is_log_abs_det_of_the_jacobian(name):
    """For each example (k, b) of a batched call: log_det[k, b] = log|det dz'/dz| from autograd's
    Jacobian, and det > 0 (the step preserves orientation, hence is a local diffeomorphism)."""
    d, c, k, b = 4, 6, 2, 3
    step = make_step(name, d, c)
    h = torch.randn(b, c, dtype=F64)  # (B, C)
    z = 0.5 * torch.randn(k, b, d, dtype=F64)  # (K, B, d): some planar examples off saturation
    z_new, log_det = step(z, h)  # (K, B, d), (K, B)
    assert z_new.shape == z.shape and log_det.shape == (k, b)
    far_from_identity = 0.0
    for i in range(k):
        for j in range(b):

            def f(x, j=j):  # (d,) -> (d,): the step for example j alone
                return step(x.view(1, 1, d), h[j : j + 1])[0].view(d)

            jac = jacobian(f, z[i, j])  # (d, d)
            sign, log_abs_det = torch.linalg.slogdet(jac)
            assert sign.item() == 1.0
            torch.testing.assert_close(log_det[i, j], log_abs_det, atol=1e-8, rtol=1e-8)
            torch.testing.assert_close(z_new[i, j], f(z[i, j]), atol=1e-12, rtol=0)
            far_from_identity = max(far_from_identity, (jac - torch.eye(d, dtype=F64)).abs().max())
    assert far_from_identity > 0.2  # the check is not vacuous


@pytest.mark.parametrize("name", INVERTIBLE)
def test_inverse_is_two_sided(name):
    """inverse(step(z)) = z and step(inverse(z')) = z' on random inputs (K=3, B=4, d=5)."""
    step = make_step(name, 5, 6)
    h = torch.randn(4, 6, dtype=F64)  # (B, C)
    z = 2.0 * torch.randn(3, 4, 5, dtype=F64)  # (K, B, d)
    torch.testing.assert_close(step.inverse(step(z, h)[0], h), z, atol=1e-8, rtol=0)
    z_new = 2.0 * torch.randn(3, 4, 5, dtype=F64)
    torch.testing.assert_close(step(step.inverse(z_new, h), h)[0], z_new, atol=1e-8, rtol=0)


def test_iaf_inverse_under_strong_contraction():
    """With larger weights sigma = sigmoid(s + 1) gets down to ~1e-6: a provisional value of a
    dimension not solved yet can overflow, and the masks' 0 * inf = nan must not reach the solved
    dimensions (the inverse used to return nan here)."""
    step = randomize(IAFStep(5, 6), std=0.8)
    h = torch.randn(4, 6, dtype=F64)  # (B, C)
    z = 2.0 * torch.randn(3, 4, 5, dtype=F64)  # (K, B, d)
    torch.testing.assert_close(step.inverse(step(z, h)[0], h), z, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("reverse", [False, True])
def test_made_is_autoregressive(reverse):
    """d m_i / d z_j and d s_i / d z_j vanish exactly unless j comes strictly before i in the order
    (1..d, or d..1 with reverse): strictly lower (upper) triangular Jacobians; and every allowed
    entry is non-zero, so the masks do not cut more than they must."""
    d, c = 5, 3
    made = randomize(MADE(d, [16, 16], context_dim=c, reverse=reverse))
    h = torch.randn(1, c, dtype=F64)  # (B=1, C)
    z = torch.randn(d, dtype=F64)
    ones = torch.ones(d, d, dtype=torch.bool)
    allowed = ones.triu(1) if reverse else ones.tril(-1)  # (out i, in j)
    for out in range(2):  # m, then s
        jac = jacobian(lambda x, out=out: made(x.view(1, d), h)[out].view(d), z)  # (d, d)
        assert (jac[~allowed] == 0).all()
        assert (jac[allowed].abs() > 1e-6).all()


def grid(lim: float, n: int) -> tuple[torch.Tensor, float]:
    """The n^2 midpoints of a grid on [-lim, lim]^2, shaped (n^2, 1, 2), and the cell area."""
    step = 2 * lim / n
    x = -lim + step * (torch.arange(n, dtype=F64) + 0.5)
    return torch.cartesian_prod(x, x).unsqueeze(1), step * step


@pytest.mark.parametrize("name", INVERTIBLE)
def test_density_integrates_to_one_on_a_grid(name):
    """sum over a fine 2-D grid of q(z) (FlowPosterior.log_prob, which inverts the steps) times
    the cell area is 1: the change of variables is right, not just self-consistent. (Smaller
    weights: with std 0.5, IAF's sigma = sigmoid(s), s growing linearly in z through the ELUs,
    contracts so hard that grid points beside the mass have preimages beyond float64's range.)"""
    q = make_posterior(name, std=0.3)
    with torch.no_grad():
        lim = q.sample((20_000,)).abs().max().item() + 3.0  # covers the mass
        z, area = grid(lim, 500)  # (n^2, 1, 2)
        log_q = q.log_prob(z.expand(-1, 2, -1))  # (n^2, B=2)
    mass = log_q.exp().sum(0) * area  # (B,)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(STEPS))
def test_importance_identity(name):
    """E_{z ~ q}[r(z) / q(z)] = int r = 1 for any normalized density r, with log q(z) from
    rsample_and_log_prob. r is a Gaussian with q's moments (fitted on an independent draw) and half
    its covariance, so r^2 / q is integrable and the estimate has finite variance; tolerance 4
    standard errors. A wider r would make the variance infinite (the test would be unreliable)."""
    n = 200_000
    q = make_posterior(name)
    with torch.no_grad():
        fit = q.sample((n,))  # (N, B, 2)
        mean = fit.mean(0)  # (B, 2)
        centred = fit - mean
        cov = torch.einsum("nbi,nbj->bij", centred, centred) / (n - 1)  # (B, 2, 2)
        r = MultivariateNormal(mean, 0.5 * cov)
        z, log_q = q.rsample_and_log_prob((n,))  # (N, B, 2), (N, B)
        ratio = (r.log_prob(z) - log_q).exp()  # (N, B)
    estimate, se = ratio.mean(0), ratio.std(0) / math.sqrt(n)  # (B,) each
    assert (se < 0.02).all()  # enough power to see an error of a few percent
    assert ((estimate - 1).abs() < 4 * se).all(), (estimate, se)


@pytest.mark.parametrize("name", list(STEPS))
def test_log_prob_at_own_samples(name):
    """log_prob(z) (by inversion) equals the log q that rsample_and_log_prob returns with z;
    Sylvester, which has no inverse, refuses with NotImplementedError."""
    q = make_posterior(name, d=5, c=6, b=4)
    with torch.no_grad():
        z, log_q = q.rsample_and_log_prob((3,))  # (K=3, B=4, d=5), (3, 4)
        if name == "sylvester":
            with pytest.raises(NotImplementedError):
                q.log_prob(z)
        else:
            torch.testing.assert_close(q.log_prob(z), log_q, atol=1e-8, rtol=0)


@pytest.mark.parametrize("std", [1.0, 3.0, 10.0])
def test_planar_constraint(std):
    """w^T u_hat = softplus(w^T u) - 1 > -1 however large the parameters (so 1 + (1 - tanh^2)
    w^T u_hat > 0 and the step is invertible), within float64's range: softplus(a) underflows
    below 1e-16 (a < -37), where the margin is lost to rounding."""
    step = PlanarStep(4, 6).double()
    with torch.no_grad():
        step.params.weight.normal_(0.0, std)
        step.params.bias.normal_(0.0, std)
    h = torch.randn(10_000, 6, dtype=F64)  # (B, C)
    u, w, _ = step.params(h).split([4, 4, 1], dim=-1)
    wu = (w * u).sum(-1)  # (B,)
    u_hat, w_hat, _ = step.constrained(h)
    wu_hat = (u_hat * w_hat).sum(-1)  # (B,)
    torch.testing.assert_close(wu_hat, nn.functional.softplus(wu) - 1, atol=1e-9, rtol=1e-12)
    keep = wu > -30.0
    assert (wu_hat[keep] > -1).all()
