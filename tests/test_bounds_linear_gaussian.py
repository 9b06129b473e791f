"""Bounds and estimators against a model whose log p(x) and posterior are known exactly."""

import math

import pytest
import torch

from dgm.estimators import Reparameterized
from dgm.evaluate import importance_log_likelihood
from dgm.objectives import ELBO
from tests.linear_gaussian import LinearGaussian


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian(D=5, d=2, sigma=0.7)


def test_linear_gaussian_closed_forms_are_consistent(lg):
    """Sanity of the reference itself: marginal vs. Monte Carlo of p(x|z) over the prior."""
    x = lg.sample_x(3)
    z = torch.randn(400_000, 1, lg.d, dtype=torch.float64)
    log_p = torch.logsumexp(lg.model.likelihood(z).log_prob(x), 0) - math.log(z.shape[0])
    assert torch.allclose(log_p, lg.log_px(x), atol=0.02)


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_elbo_is_below_log_px_and_matches_its_closed_form(lg, kl):
    x = lg.sample_x(8)
    q_module = lg.perturbed_posterior()
    q = q_module(x)
    estimator = Reparameterized(ELBO(kl=kl), k=20_000)
    with torch.no_grad():
        est = estimator(lg.model, q, x)
    exact = lg.elbo_closed_form(x, q.base_dist.loc, q.base_dist.scale).detach()
    # The MC estimate is unbiased for the closed form: within 4 standard errors per example.
    z = q.sample((2000,))
    log_w = lg.model.log_joint(x, z) - q.log_prob(z)
    se = log_w.std(0) / math.sqrt(estimator.k)
    assert ((est.bound - exact).abs() < 4 * se + 1e-9).all()
    # The bound is strictly below log p(x) when q is not the posterior: the gap is KL(q || p(z|x)).
    assert (exact < lg.log_px(x) - 1e-3).all()


def test_elbo_equals_log_px_at_the_exact_posterior(lg):
    x = lg.sample_x(16)
    q = lg.exact_posterior()(x)
    # In closed form the gap KL(q || p(z|x)) vanishes.
    exact = lg.elbo_closed_form(x, q.base_dist.loc, q.base_dist.scale)
    assert torch.allclose(exact, lg.log_px(x), atol=1e-10, rtol=0)
    # With the KL by Monte Carlo, every estimate is exact whatever the samples.
    with torch.no_grad():
        est = Reparameterized(ELBO(kl="mc"), k=3)(lg.model, q, x)
    assert torch.allclose(est.bound, lg.log_px(x), atol=1e-10, rtol=0)
    # Every single log-weight equals log p(x): zero variance.
    z = q.sample((50,))
    log_w = lg.model.log_joint(x, z) - q.log_prob(z)
    assert torch.allclose(log_w, lg.log_px(x).expand_as(log_w), atol=1e-10, rtol=0)


def test_importance_sampled_log_likelihood_converges_to_log_px(lg):
    x = lg.sample_x(4)
    log_px = lg.log_px(x)
    q_module = lg.perturbed_posterior(shift=0.4, scale=1.6)
    errors = {}
    for k in (1, 10, 100, 10_000):
        reps = torch.stack(
            [
                importance_log_likelihood(
                    lg.model, q_module, x, k, pairs_per_pass=3_000
                ).log_likelihood
                for _ in range(40)
            ]
        )  # (R, B)
        mean, se = reps.mean(0), reps.std(0) / math.sqrt(reps.shape[0])
        # A lower bound in expectation for every k (Jensen): never above log p(x) beyond MC error.
        assert (mean <= log_px + 4 * se + 1e-12).all(), k
        errors[k] = (log_px - mean).abs().mean().item()
    assert errors[1] > 0.05  # q is visibly wrong, so the ELBO is visibly loose
    assert errors[10] < errors[1] and errors[100] < errors[10]
    assert errors[10_000] < 0.01 * errors[1]


def test_chunking_does_not_change_the_estimate(lg):
    """Chunks over samples and over examples combine exactly (same draws, same numbers)."""
    x = lg.sample_x(10)
    q_module = lg.perturbed_posterior()
    torch.manual_seed(3)
    one_pass = importance_log_likelihood(
        lg.model, q_module, x, 64, batch_size=10, pairs_per_pass=640
    )
    # The reference draws the same z in one go, computed directly from the definition.
    torch.manual_seed(3)
    q = q_module(x)
    z = q.sample((64,))
    log_w = lg.model.log_joint(x, z) - q.log_prob(z)
    reference = torch.logsumexp(log_w, 0) - math.log(64)
    assert torch.allclose(one_pass.log_likelihood, reference, atol=1e-12)
    assert torch.allclose(one_pass.elbo, log_w.mean(0), atol=1e-12)
    # Smaller chunks: different draws, same quantity, so the same value within Monte Carlo error.
    chunked = importance_log_likelihood(lg.model, q_module, x, 64, batch_size=3, pairs_per_pass=7)
    diff = (chunked.log_likelihood - reference).mean().abs()
    assert diff < 4 * (log_w.std(0).mean() / math.sqrt(64))


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_reparameterized_gradient_is_unbiased(lg, kl):
    """Mean of R single-sample gradients vs. the gradient of the closed-form ELBO, in all of
    (lambda, eta) and the decoder's (W, b), within 4 Monte Carlo standard errors per coordinate."""
    x = lg.sample_x(1)
    lam = torch.tensor([[0.3, -0.5]], dtype=torch.float64, requires_grad=True)
    log_eta = torch.tensor([[-0.2, 0.4]], dtype=torch.float64, requires_grad=True)
    decoder = lg.model.decoder
    params = [lam, log_eta, decoder.weight, decoder.bias]

    exact = lg.elbo_closed_form(x, lam, log_eta.exp(), decoder.weight, decoder.bias).sum()
    g_exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact, params)])

    from torch.distributions import Independent, Normal

    estimator = Reparameterized(ELBO(kl=kl), k=1)
    R = 4000
    grads = []
    for _ in range(R):
        q = Independent(Normal(lam, log_eta.exp()), 1)
        est = estimator(lg.model, q, x)
        grads.append(
            torch.cat([g.flatten() for g in torch.autograd.grad(est.surrogate.sum(), params)])
        )
    g = torch.stack(grads)  # (R, P)
    mean, se = g.mean(0), g.std(0) / math.sqrt(R)
    assert (se > 0).all()
    assert ((mean - g_exact).abs() <= 4 * se).all(), (mean - g_exact) / se


def test_kl_warmup_changes_the_gradient_not_the_value(lg):
    """With weight beta the surrogate's gradient is that of E[log p(x|z)] - beta KL, exactly
    (same samples), while the reported bound is still the ELBO."""
    from torch.distributions import Independent, Normal, kl_divergence

    x = lg.sample_x(3)
    lam = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    log_eta = torch.full((3, 2), -0.3, dtype=torch.float64, requires_grad=True)

    def run(beta):
        torch.manual_seed(5)
        q = Independent(Normal(lam, log_eta.exp()), 1)
        est = Reparameterized(ELBO(kl="analytic"), k=4)(lg.model, q, x, kl_weight=beta)
        grads = torch.autograd.grad(est.surrogate.sum(), [lam, log_eta])
        return est, grads

    full, g_full = run(1.0)
    half, g_half = run(0.5)
    assert torch.equal(full.bound, half.bound)
    assert torch.allclose(half.surrogate, half.bound)
    q = Independent(Normal(lam, log_eta.exp()), 1)
    g_kl = torch.autograd.grad(kl_divergence(q, lg.model.prior()).sum(), [lam, log_eta])
    for a, b, k in zip(g_full, g_half, g_kl, strict=True):
        assert torch.allclose(b - a, 0.5 * k, atol=1e-12)
