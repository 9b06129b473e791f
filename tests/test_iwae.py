"""The IWAE bound, STL and DReG against a linear-Gaussian model with a closed-form log p(x).

As in test_estimators.py, a per-datapoint table with R identical rows fed R copies of one x gives
R independent estimates of the encoder's gradient in one backward pass.
"""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from dgm.config import load_config
from dgm.errors import ConfigError
from dgm.estimators import DReG, Reparameterized, StickingTheLanding
from dgm.objectives import ELBO, IWAE, elbo, iwae
from dgm.variational import LocalGaussian
from tests.linear_gaussian import LinearGaussian


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian(D=5, d=2, sigma=0.7, seed=3)


def point(lg):
    x = lg.sample_x(1, seed=5)[0]
    lam = torch.tensor([0.4, -0.3], dtype=torch.float64)  # q far from the posterior
    log_eta = torch.tensor([-0.5, 0.2], dtype=torch.float64)
    return x, lam, log_eta


def table_of(lg, r, lam, log_eta):
    table = LocalGaussian(r, lg.d, sparse=False).double()
    with torch.no_grad():
        table.lam.copy_(lam.expand(r, -1))
        table.log_eta.copy_(log_eta.expand(r, -1))
    return table


def encoder_grads(lg, estimator, x, lam, log_eta, r):
    """(r, 2 d): each row's gradient of its bound estimate w.r.t. (lambda, log eta)."""
    table = table_of(lg, r, lam, log_eta)
    xs = x.expand(r, -1)
    est = estimator(lg.model, table(xs, torch.arange(r)), xs)
    g = torch.autograd.grad(est.surrogate.sum(), (table.lam, table.log_eta))
    return torch.cat(g, -1), est


def test_iwae_with_one_sample_is_the_elbo(lg):
    log_w = torch.randn(1, 7, dtype=torch.float64)
    assert torch.equal(iwae(log_w), elbo(log_w))
    x, lam, log_eta = point(lg)
    q = table_of(lg, 4, lam, log_eta)(x.expand(4, -1), torch.arange(4))
    torch.manual_seed(0)
    a = Reparameterized(IWAE(), k=1)(lg.model, q, x)
    torch.manual_seed(0)
    b = Reparameterized(ELBO(kl="mc"), k=1)(lg.model, q, x)
    assert torch.allclose(a.bound, b.bound, atol=1e-12, rtol=0)


def test_expected_iwae_bound_increases_with_k_and_stays_below_log_px(lg):
    """E[IWAE_K] from 20,000 replicates per K: increasing in K (each step by more than 4
    standard errors of the difference), below log p(x), and closing in on it at K = 2000."""
    x, lam, log_eta = point(lg)
    log_px = lg.log_px(x[None])[0].item()
    torch.manual_seed(1)
    means, ses = [], []
    for k in (1, 2, 5, 20, 100):
        r = 20_000
        q = Independent(Normal(lam.expand(r, -1), log_eta.exp().expand(r, -1)), 1)
        with torch.no_grad():
            bound = Reparameterized(IWAE(), k=k)(lg.model, q, x).bound  # (r,)
        means.append(bound.mean().item())
        ses.append(bound.std().item() / math.sqrt(r))
    for i in range(len(means) - 1):
        assert means[i + 1] - means[i] > 4 * math.hypot(ses[i], ses[i + 1]), (means, ses)
    assert all(m + 4 * s < log_px for m, s in zip(means, ses, strict=True)), (means, log_px)
    q = Independent(Normal(lam.expand(400, -1), log_eta.exp().expand(400, -1)), 1)
    with torch.no_grad():
        big = Reparameterized(IWAE(), k=2000)(lg.model, q, x).bound.mean()
    assert means[-1] < big.item() < log_px
    assert log_px - big.item() < 0.1 * (log_px - means[0])  # the gap closes as K grows


def mean_and_se(g):
    return g.mean(0), g.std(0) / math.sqrt(g.shape[0])


def test_stl_is_unbiased_for_the_elbo_gradient(lg):
    """STL's mean gradient in (lambda, log eta) equals the closed-form ELBO's, within 4 SE."""
    x, lam, log_eta = point(lg)
    lam_, log_eta_ = lam.clone().requires_grad_(True), log_eta.clone().requires_grad_(True)
    exact = lg.elbo_closed_form(x[None], lam_[None], log_eta_.exp()[None]).sum()
    g_exact = torch.cat(torch.autograd.grad(exact, (lam_, log_eta_)))
    torch.manual_seed(2)
    g, _ = encoder_grads(lg, StickingTheLanding(k=1), x, lam, log_eta, 40_000)
    mean, se = mean_and_se(g)
    assert (se < 0.05 * g_exact.abs().max()).all()  # precise enough to see a bias
    assert ((mean - g_exact).abs() <= 4 * se).all(), (mean - g_exact) / se


def test_stl_gradient_vanishes_at_the_exact_posterior(lg):
    """With q = p(z | x), log w = log p(x) whatever z: every single STL estimate is zero, while
    the plain reparameterized gradient (with the KL by Monte Carlo) is not."""
    x = lg.sample_x(1, seed=6)[0]
    q = lg.exact_posterior()(x[None])
    lam, log_eta = q.base_dist.loc[0].detach(), q.base_dist.scale[0].log().detach()
    torch.manual_seed(3)
    g_stl, _ = encoder_grads(lg, StickingTheLanding(k=1), x, lam, log_eta, 500)
    g_rep, _ = encoder_grads(lg, Reparameterized(ELBO(kl="mc"), k=1), x, lam, log_eta, 500)
    assert g_stl.abs().max() < 1e-9
    assert g_rep.var(0).sum() > 1e-2


def test_dreg_is_unbiased_for_the_iwae_gradient(lg):
    """DReG's and the plain IWAE gradient's means agree in the encoder's (lambda, log eta) and
    the decoder's (W, b), within 4 standard errors of the difference, at K = 10."""
    x, lam, log_eta = point(lg)
    torch.manual_seed(4)
    r = 40_000
    g_dreg, _ = encoder_grads(lg, DReG(k=10), x, lam, log_eta, r)
    g_iwae, _ = encoder_grads(lg, Reparameterized(IWAE(), k=10), x, lam, log_eta, r)
    (m1, s1), (m2, s2) = mean_and_se(g_dreg), mean_and_se(g_iwae)
    se = torch.sqrt(s1**2 + s2**2)
    assert (se < 0.1 * m2.abs().max()).all()
    assert ((m1 - m2).abs() <= 4 * se).all(), (m1 - m2) / se

    decoder = lg.model.decoder
    params = [decoder.weight, decoder.bias]

    def decoder_grads(estimator, groups=40, per_group=500):
        """(groups, P): the mean over a group of per_group estimates (rows share theta)."""
        out = []
        table = table_of(lg, per_group, lam, log_eta)
        xs = x.expand(per_group, -1)
        for _ in range(groups):
            est = estimator(lg.model, table(xs, torch.arange(per_group)), xs)
            g = torch.autograd.grad(est.surrogate.mean(), params)
            out.append(torch.cat([t.flatten() for t in g]))
        return torch.stack(out)

    (m1, s1) = mean_and_se(decoder_grads(DReG(k=10)))
    (m2, s2) = mean_and_se(decoder_grads(Reparameterized(IWAE(), k=10)))
    se = torch.sqrt(s1**2 + s2**2)
    assert ((m1 - m2).abs() <= 4 * se).all(), (m1 - m2) / se


def test_dreg_is_unbiased_under_kl_warmup(lg):
    """With beta = 0.3 DReG's encoder gradient matches the annealed IWAE bound's pathwise
    gradient (the weights become w~ ((1 - beta) + beta w~), not w~^2), within 4 SE."""
    x, lam, log_eta = point(lg)
    torch.manual_seed(8)
    r = 40_000

    def annealed(estimator):
        table = table_of(lg, r, lam, log_eta)
        xs = x.expand(r, -1)
        est = estimator(lg.model, table(xs, torch.arange(r)), xs, kl_weight=0.3)
        return torch.cat(torch.autograd.grad(est.surrogate.sum(), (table.lam, table.log_eta)), -1)

    (m1, s1) = mean_and_se(annealed(DReG(k=3)))
    (m2, s2) = mean_and_se(annealed(Reparameterized(IWAE(), k=3)))
    se = torch.sqrt(s1**2 + s2**2)
    assert (se < 0.1 * m2.abs().max()).all()
    assert ((m1 - m2).abs() <= 4 * se).all(), (m1 - m2) / se


def test_dreg_encoder_gradient_has_lower_variance_than_iwae_at_large_k(lg):
    """At K = 100, with q near the posterior (mean and log-scale off by 0.3), the IWAE encoder
    gradient's variance is over 100 times DReG's; at the exact posterior DReG's is zero, for
    any K, while the IWAE gradient keeps its score-function noise (Tucker et al. 2018)."""
    x = lg.sample_x(1, seed=5)[0]
    q = lg.exact_posterior()(x[None])
    lam, log_eta = q.base_dist.loc[0].detach(), q.base_dist.scale[0].log().detach()
    iwae_estimator = Reparameterized(IWAE(), k=100)
    torch.manual_seed(5)
    g_dreg, _ = encoder_grads(lg, DReG(k=100), x, lam + 0.3, log_eta + 0.3, 2000)
    g_iwae, _ = encoder_grads(lg, iwae_estimator, x, lam + 0.3, log_eta + 0.3, 2000)
    v_dreg, v_iwae = g_dreg.var(0).sum().item(), g_iwae.var(0).sum().item()
    assert v_iwae > 100 * v_dreg, (v_iwae, v_dreg)  # measured: about 14,000 times
    g_dreg, _ = encoder_grads(lg, DReG(k=100), x, lam, log_eta, 500)
    g_iwae, _ = encoder_grads(lg, iwae_estimator, x, lam, log_eta, 500)
    assert g_dreg.abs().max() < 1e-9 and g_iwae.var(0).sum() > 1e-2


def test_values_are_the_true_bounds_whatever_the_estimator(lg):
    """STL and DReG change gradients, never the logged value: same samples, same bound."""
    x, lam, log_eta = point(lg)
    q = table_of(lg, 6, lam, log_eta)(x.expand(6, -1), torch.arange(6))
    for ours, reference in (
        (StickingTheLanding(k=3), Reparameterized(ELBO(kl="mc"), k=3)),
        (DReG(k=3), Reparameterized(IWAE(), k=3)),
    ):
        torch.manual_seed(6)
        a = ours(lg.model, q, x, kl_weight=0.3)
        torch.manual_seed(6)
        b = reference(lg.model, q, x)
        assert torch.allclose(a.bound, b.bound, atol=1e-12, rtol=0)
        assert torch.allclose(a.surrogate, a.bound, atol=1e-12, rtol=0)


def test_iwae_warmup_keeps_the_value(lg):
    x, lam, log_eta = point(lg)
    q = table_of(lg, 4, lam, log_eta)(x.expand(4, -1), torch.arange(4))
    est = Reparameterized(IWAE(), k=5)(lg.model, q, x, kl_weight=0.2)
    assert torch.allclose(est.surrogate, est.bound)


def test_free_bits_stop_the_kl_gradient_of_dimensions_below_the_threshold(lg):
    """Free bits: a latent dimension whose batch-mean KL is below lambda gets no KL gradient;
    the others get the full KL gradient; the value is still the ELBO."""
    x = lg.sample_x(8)
    lam = torch.zeros(8, 2, dtype=torch.float64)
    lam[:, 0] = 0.3  # dimension 0: KL_0 about 0.05 nats, below the threshold
    lam[:, 1] = 2.0  # dimension 1: KL_1 about 2 nats per example, above it
    log_eta = torch.full((8, 2), -0.1, dtype=torch.float64)
    table = table_of(lg, 8, lam, log_eta)
    with torch.no_grad():
        table.lam.copy_(lam)

    def grads(free_bits):
        torch.manual_seed(7)
        est = Reparameterized(k=1, free_bits=free_bits)(lg.model, table(x, torch.arange(8)), x)
        return est, torch.autograd.grad(est.surrogate.sum(), table.lam)[0]

    plain, g_plain = grads(0.0)
    fb, g_fb = grads(0.5)
    assert torch.equal(plain.bound, fb.bound)
    # the KL's gradient in lambda is lambda itself; dimension 0 loses it, dimension 1 keeps it
    assert torch.allclose(g_fb[:, 0] - g_plain[:, 0], lam[:, 0], atol=1e-12)
    assert torch.allclose(g_fb[:, 1], g_plain[:, 1], atol=1e-12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective.estimator": "dreg"}, "for bound = 'iwae'"),
        ({"objective.estimator": "stl", "objective.bound": "iwae"}, "stl is biased"),
        ({"objective.estimator": "score", "objective.bound": "iwae"}, "not an estimator"),
        ({"objective.estimator": "stl", "objective.kl": "analytic"}, "set kl = 'mc'"),
        ({"model.posterior": "iaf:2", "objective.kl": "analytic"}, "no closed-form KL"),
        ({"model.posterior": "planar:2", "objective.estimator": "stl"}, "must be 'reparam'"),
        ({"model.posterior": "planar"}, "FLOW:L"),
        ({"model.posterior": "maf:2"}, "FLOW:L"),
        ({"objective.free_bits": 0.5, "objective.bound": "iwae"}, "free_bits applies"),
        ({"model.upper": [{"latent_dim": 10}], "inference.kind": "local"}, "amortized"),
        ({"objective.bound": "iwae", "objective.kl": "analytic"}, "no KL term"),
        ({"model.kind": "ae", "objective.bound": "iwae"}, "model.kind = 'vae'"),
        ({"model.posterior": "iaf:99999999999999999999"}, "L <= 128"),
    ],
)
def test_invalid_combinations_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "kl"),
    [
        ({}, "analytic"),
        ({"objective.estimator": "score"}, "analytic"),
        ({"objective.bound": "iwae"}, "mc"),
        ({"objective.estimator": "stl"}, "mc"),
        ({"model.posterior": "iaf:2"}, "mc"),
        ({"model.upper": [{"latent_dim": 4}]}, "mc"),
        ({"objective.kl": "mc"}, "mc"),
    ],
)
def test_kl_auto_is_the_closed_form_only_where_one_exists(overrides, kl):
    from dgm.build import resolve_kl

    assert resolve_kl(load_config(None, overrides)) == kl
