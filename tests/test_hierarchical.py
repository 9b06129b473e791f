"""Two stochastic layers: p(z2) p(z1 | z2) p(x | z1) and q(z1 | x) q(z2 | z1) as Gaussian chains.

With linear conditionals the model is linear-Gaussian, so log p(x) is known in closed form and the
same bounds and estimators as for one layer can be checked against it.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from dgm.build import build_model, build_posterior
from dgm.config import load_config
from dgm.estimators import DReG, Reparameterized, StickingTheLanding
from dgm.evaluate import active_units, importance_log_likelihood
from dgm.models import DeepLatentModel, GaussianLikelihood, HierarchicalPrior
from dgm.objectives import ELBO, IWAE
from dgm.variational import HierarchicalEncoder

D, D1, D2, SIGMA = 4, 3, 2, 0.6


def linear(n_in, n_out, g, log_sigma=None):
    """A Linear layer (n_in -> 2 n_out): mean A v + a, and a constant log sigma."""
    layer = nn.Linear(n_in, 2 * n_out).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:n_out] = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
        layer.bias[:n_out] = torch.randn(n_out, generator=g, dtype=torch.float64)
        layer.bias[n_out:] = -0.3 if log_sigma is None else log_sigma
    return layer


@pytest.fixture(scope="module")
def two_layer():
    g = torch.Generator().manual_seed(0)
    prior = HierarchicalPrior([D1, D2], [linear(D2, D1, g)])
    decoder = nn.Linear(D1, D).double()
    with torch.no_grad():
        decoder.weight.copy_(torch.randn(D, D1, generator=g, dtype=torch.float64))
    model = DeepLatentModel(prior.double(), decoder, GaussianLikelihood(SIGMA), D)
    q = HierarchicalEncoder(linear(D, D1, g), [linear(D1, D2, g)], [D1, D2]).double()
    return model, q


def exact_log_px(model, x):
    """z2 ~ N(0, I); z1 = A z2 + a + S1 eps; x = W z1 + b + sigma eps'."""
    cond = model.p_z.conditionals[0].net
    A, a = cond.weight[:D1], cond.bias[:D1]
    s1 = cond.bias[D1:].exp()
    W, b = model.decoder.weight, model.decoder.bias
    cov_z1 = A @ A.T + torch.diag(s1**2)
    cov_x = W @ cov_z1 @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    return MultivariateNormal(W @ a + b, cov_x).log_prob(x).detach()


def test_chain_log_prob_is_the_sum_of_its_factors(two_layer):
    model, q_module = two_layer
    x = torch.randn(5, D, dtype=torch.float64)
    q = q_module(x)
    z = q.rsample((3,))  # (3, 5, D1 + D2), z1 first
    assert z.shape == (3, 5, D1 + D2)
    z1, z2 = z[..., :D1], z[..., D1:]
    first = q_module.first(x)
    second = q_module.conditionals[0](z1)
    assert torch.allclose(q.log_prob(z), first.log_prob(z1) + second.log_prob(z2), atol=1e-12)
    p = model.prior()
    top = Independent(Normal(torch.zeros(D2).double(), torch.ones(D2).double()), 1)
    expected = top.log_prob(z2) + model.p_z.conditionals[0](z2).log_prob(z1)
    assert torch.allclose(p.log_prob(z), expected, atol=1e-12)
    z_, log_q = q.rsample_and_log_prob((4,))  # one pass down the chain: the same density
    assert torch.allclose(log_q, q.log_prob(z_), atol=1e-12)
    # the decoder reads z1 only
    assert torch.allclose(model.likelihood(z).mean, model.decoder(z1))


def test_prior_samples_have_the_marginal_moments(two_layer):
    model, _ = two_layer
    torch.manual_seed(0)
    z = model.prior().sample((200_000,))  # (N, D1 + D2)
    cond = model.p_z.conditionals[0].net
    A, a, s1 = cond.weight[:D1], cond.bias[:D1], cond.bias[D1:].exp()
    z1 = z[:, :D1]
    se = z1.std(0) / math.sqrt(z.shape[0])
    assert ((z1.mean(0) - a).abs() < 4 * se).all()
    cov = torch.cov(z1.T)
    assert torch.allclose(cov, A @ A.T + torch.diag(s1**2), atol=0.05)


def test_bounds_do_not_care_how_many_layers(two_layer):
    """IWAE_K (K = 1, 10, 100) increases and stays below the exact log p(x); the importance-sampled
    estimate with k = 20,000 matches it within 4 standard errors."""
    model, q_module = two_layer
    torch.manual_seed(1)
    x = torch.randn(1, D, dtype=torch.float64) + model.decoder.bias
    log_px = exact_log_px(model, x)[0].item()
    means = []
    r = 5000
    xs = x.expand(r, -1)
    with torch.no_grad():
        for k in (1, 10, 100):
            bound = Reparameterized(IWAE(), k=k)(model, q_module(xs), xs).bound
            means.append((bound.mean().item(), bound.std().item() / math.sqrt(r)))
    for (m0, s0), (m1, s1) in zip(means, means[1:], strict=False):
        assert m1 - m0 > 4 * math.hypot(s0, s1)
    assert all(m + 4 * s < log_px for m, s in means)
    ll = importance_log_likelihood(model, q_module, x.expand(20, -1), 20_000)
    est = ll.log_likelihood
    assert abs(est.mean().item() - log_px) < max(4 * est.std().item(), 0.02)


@pytest.mark.parametrize(
    ("estimator", "reference"),
    [
        (StickingTheLanding(k=2), Reparameterized(ELBO(kl="mc"), k=2)),
        (DReG(k=5), Reparameterized(IWAE(), k=5)),
    ],
)
def test_stl_and_dreg_are_unbiased_through_both_layers(two_layer, estimator, reference):
    """The stopped-parameter density keeps z1's path into q(z2 | z1): STL's and DReG's mean
    gradients in both layers' encoder parameters equal the plain pathwise gradients of their
    bounds (40 groups of 500 estimates each, within 4 standard errors of the difference)."""
    from dgm.distributions import stop_parameters

    model, q_module = two_layer
    params = list(q_module.parameters())
    x = torch.randn(1, D, dtype=torch.float64) + model.decoder.bias
    xs = x.expand(500, -1)

    def group_means(est):
        out = []
        for _ in range(40):
            e = est(model, q_module(xs), xs)
            grads = torch.autograd.grad(e.surrogate.mean(), params)
            out.append(torch.cat([g.flatten() for g in grads]))
        return torch.stack(out)  # (40, P)

    torch.manual_seed(3)
    a, b = group_means(estimator), group_means(reference)
    se = torch.sqrt(a.var(0) / 40 + b.var(0) / 40)
    assert (se > 0).all()
    assert ((a.mean(0) - b.mean(0)).abs() <= 4 * se).all(), (a.mean(0) - b.mean(0)) / se
    # log q_bar: no gradient to phi directly, but z1's path into q(z2 | z1) is kept
    q = q_module(x)
    z = q.rsample((3,))
    log_q_bar = stop_parameters(q).log_prob(z.detach().requires_grad_(True))
    assert not log_q_bar.requires_grad or all(
        g is None for g in torch.autograd.grad(log_q_bar.sum(), params, allow_unused=True)
    )
    z1 = z.detach()[..., :D1].requires_grad_(True)
    z_cat = torch.cat([z1, z.detach()[..., D1:]], -1)
    (g_z1,) = torch.autograd.grad(stop_parameters(q).log_prob(z_cat).sum(), z1)
    second_only = q_module.conditionals[0](z1).log_prob(z.detach()[..., D1:]).sum()
    (g_second,) = torch.autograd.grad(second_only, z1)
    assert g_second.abs().sum() > 0  # q(z2 | z1) depends on z1, and log q_bar keeps that path
    assert torch.allclose(
        g_z1, g_second + torch.autograd.grad(q_module.first(x).log_prob(z1).sum(), z1)[0]
    )


def test_the_papers_two_layer_architecture_builds():
    """784-200-200-100 / 100-100-50, as Burda et al. (2015), with the per-layer active units."""
    config = load_config("configs/iwae/2l_vae_k1.toml")
    model = build_model(config.model, 784)
    q = build_posterior(config, 784, 10)
    assert model.latent_dim == 150 and model.bottom_dim == 100
    assert [m.out_features for m in q.first.net if isinstance(m, nn.Linear)] == [200, 200, 200]
    assert [m.out_features for m in q.conditionals[0].net if isinstance(m, nn.Linear)] == [
        100,
        100,
        100,
    ]
    x = torch.rand(7, 784).bernoulli()
    units = active_units(q, x)
    assert units["latent_units"] == 150 and len(units["active_units_per_layer"]) == 2


def test_active_units_of_a_collapsed_layer_and_a_collapsed_flow_are_zero(two_layer):
    """A layer whose q equals its prior N(0, I) for every x has no active unit, although a
    Monte Carlo E_q[z_u] from 50 draws varies across x by 1/50 = 0.02 > 0.01 by noise alone:
    the chain's conditional means carry no such noise, and for a flow the estimates' own
    variance is subtracted."""
    from dgm.flows import PlanarStep
    from dgm.variational import FlowEncoder

    g = torch.Generator().manual_seed(2)
    collapsed = linear(D1, D2, g, log_sigma=0.0)
    with torch.no_grad():
        collapsed.weight.zero_()
        collapsed.bias.zero_()
    q = HierarchicalEncoder(linear(D, D1, g), [collapsed], [D1, D2]).double()
    x = torch.randn(2000, D, dtype=torch.float64) * 3
    units = active_units(q, x, samples=50)
    assert units["active_units_per_layer"] == [D1, 0]

    trunk = nn.Linear(D, 6).double()
    flow = FlowEncoder(trunk, 6, 3, nn.ModuleList([PlanarStep(3, 6)])).double()
    with torch.no_grad():
        flow.base.weight.zero_()
        flow.base.bias.zero_()  # q_0 = N(0, I) for every x
        flow.steps[0].params.weight.zero_()  # the same planar step for every x
    units = active_units(flow, x, samples=50)
    assert units["active_units"] == 0, units["unit_activity"]
    assert max(abs(a) for a in units["unit_activity"]) < 0.005
