"""VIMCO (Mnih and Rezende 2016) against the linear-Gaussian model: its leave-one-out signal by
its definition, its gradient unbiased for the IWAE bound's, its value the true bound, and its
place among the registered estimators (configs, gradvar)."""

import math

import pytest
import torch

from dgm.config import load_config
from dgm.errors import ConfigError
from dgm.estimators import VIMCO, Reparameterized
from dgm.estimators.vimco import leave_one_out_signal
from dgm.gradvar import measured_variants
from dgm.objectives import ELBO, IWAE
from dgm.variational import FlowEncoder, GaussianEncoder
from tests.linear_gaussian import LinearGaussian
from tests.test_iwae import encoder_grads, mean_and_se, point, table_of


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian(D=5, d=2, sigma=0.7, seed=3)


def test_the_leave_one_out_signal_is_its_definition():
    torch.manual_seed(0)
    log_w = 3 * torch.randn(6, 4, dtype=torch.float64)
    k = log_w.shape[0]
    expected = torch.empty_like(log_w)
    for i in range(k):
        others = torch.cat([log_w[:i], log_w[i + 1 :]])  # (K - 1, B)
        replaced = torch.cat([others, others.mean(0, keepdim=True)])  # w_k -> geometric mean
        expected[i] = (torch.logsumexp(log_w, 0) - math.log(k)) - (
            torch.logsumexp(replaced, 0) - math.log(k)
        )
    torch.testing.assert_close(leave_one_out_signal(log_w), expected, rtol=1e-12, atol=1e-12)


def test_vimco_is_unbiased_for_the_iwae_gradient(lg):
    """VIMCO's and the pathwise IWAE gradient's means agree in the encoder's (lambda, log eta) and
    the decoder's (W, b), within 4 standard errors of the difference, at K = 10."""
    x, lam, log_eta = point(lg)
    torch.manual_seed(11)
    r = 40_000
    g_vimco, _ = encoder_grads(lg, VIMCO(k=10), x, lam, log_eta, r)
    g_iwae, _ = encoder_grads(lg, Reparameterized(IWAE(), k=10), x, lam, log_eta, r)
    (m1, s1), (m2, s2) = mean_and_se(g_vimco), mean_and_se(g_iwae)
    se = torch.sqrt(s1**2 + s2**2)
    assert (se < 0.1 * m2.abs().max()).all()
    assert ((m1 - m2).abs() <= 4 * se).all(), (m1 - m2) / se

    decoder = lg.model.decoder
    params = [decoder.weight, decoder.bias]
    table = table_of(lg, 500, lam, log_eta)
    xs = x.expand(500, -1)

    def decoder_grads(estimator, groups=40):
        out = []
        for _ in range(groups):
            est = estimator(lg.model, table(xs, torch.arange(500)), xs)
            g = torch.autograd.grad(est.surrogate.mean(), params)
            out.append(torch.cat([t.flatten() for t in g]))
        return torch.stack(out)

    (m1, s1) = mean_and_se(decoder_grads(VIMCO(k=10)))
    (m2, s2) = mean_and_se(decoder_grads(Reparameterized(IWAE(), k=10)))
    se = torch.sqrt(s1**2 + s2**2)
    assert ((m1 - m2).abs() <= 4 * se).all(), (m1 - m2) / se


def test_vimco_is_unbiased_under_kl_warmup(lg):
    """With beta = 0.3 VIMCO's encoder gradient is the annealed IWAE bound's, within 4 SE."""
    x, lam, log_eta = point(lg)
    torch.manual_seed(12)
    r = 40_000
    table = table_of(lg, r, lam, log_eta)
    xs = x.expand(r, -1)

    def annealed(estimator):
        est = estimator(lg.model, table(xs, torch.arange(r)), xs, kl_weight=0.3)
        return torch.cat(torch.autograd.grad(est.surrogate.sum(), (table.lam, table.log_eta)), -1)

    (m1, s1) = mean_and_se(annealed(VIMCO(k=4)))
    (m2, s2) = mean_and_se(annealed(Reparameterized(IWAE(), k=4)))
    se = torch.sqrt(s1**2 + s2**2)
    assert ((m1 - m2).abs() <= 4 * se).all(), (m1 - m2) / se


def test_the_logged_value_is_the_true_iwae_bound(lg):
    """The same draws of z give VIMCO and the pathwise estimator the same bound; the surrogate
    has the bound's value."""
    x, lam, log_eta = point(lg)
    q = table_of(lg, 6, lam, log_eta)(x.expand(6, -1), torch.arange(6))
    torch.manual_seed(6)
    a = VIMCO(k=3)(lg.model, q, x, kl_weight=0.3)
    torch.manual_seed(6)
    b = Reparameterized(IWAE(), k=3)(lg.model, q, x)
    assert torch.allclose(a.bound, b.bound, atol=1e-12, rtol=0)
    assert torch.allclose(a.surrogate, a.bound, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective.bound": "iwae", "objective.k": 1}, "k >= 2"),
        ({"objective.bound": "elbo", "objective.k": 5}, "for bound = 'iwae'"),
        (
            {"objective.bound": "iwae", "objective.k": 5, "model.posterior": "iaf:2"},
            "only along its own samples",
        ),
    ],
)
def test_vimco_is_refused_where_it_does_not_apply(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"objective.estimator": "vimco", **overrides})


def test_vimco_refuses_one_sample_and_the_elbo():
    with pytest.raises(ValueError, match="k >= 2"):
        VIMCO(k=1)
    with pytest.raises(ValueError, match="for bound = 'iwae'"):
        VIMCO(k=5, bound=ELBO(kl="mc"))


def test_vimco_is_a_registered_estimator_that_gradvar_measures():
    overrides = {"objective.estimator": "vimco", "objective.bound": "iwae", "objective.k": 5}
    assert load_config(None, overrides).objective.estimator == "vimco"
    measured = [(name, bound) for name, _, bound in measured_variants(GaussianEncoder.provides)]
    assert ("vimco", IWAE()) in measured
    assert ("vimco", ELBO(kl="mc")) not in measured and ("vimco", ELBO()) not in measured
    assert all(name != "vimco" for name, _, _ in measured_variants(FlowEncoder.provides))
