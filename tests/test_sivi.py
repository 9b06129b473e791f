"""Semi-implicit VI (dgm.variational.semi_implicit): the surrogate density's bound is below the
exact ln p(x) of the linear-Gaussian model and rises with the number J of extra draws of psi;
the posterior trains through the same estimators, bounds and evaluation as every other q."""

import math

import pytest
import torch
from torch import nn

import dgm.counts as counts
from dgm.build import build_model, build_posterior
from dgm.config import ConfigError, validate
from dgm.distributions import rsample_and_log_prob
from dgm.variational.semi_implicit import SemiImplicitEncoder
from tests.linear_gaussian import LinearGaussian


def _sivi(extra: int, D: int, d: int) -> SemiImplicitEncoder:
    torch.manual_seed(0)
    enc = SemiImplicitEncoder(nn.Identity(), D, d, 3, [32], "tanh", extra=extra).double()
    with torch.no_grad():  # a narrow q(z | psi): the mixing distribution carries the spread
        enc.log_scale.bias.fill_(-1.5)
        enc.log_scale.weight.mul_(0.1)
    return enc


def _surrogate_elbo(lg, enc, x, k=4000, seed=1):
    """Per example, the mean of log p(x, z) - log q_J(z | x) over k draws, and its standard
    error."""
    torch.manual_seed(seed)
    with torch.no_grad():
        z, log_q = rsample_and_log_prob(enc(x), k)  # (k, B, d), (k, B)
        log_w = lg.model.log_joint(x, z) - log_q
    return log_w.mean(0), log_w.std(0) / math.sqrt(k)


def test_the_sivi_bound_is_below_log_p_x_and_rises_with_the_extra_draws():
    lg = LinearGaussian(D=5, d=2, sigma=0.7)
    x = lg.sample_x(4)
    exact = lg.log_px(x)
    means, errors = [], []
    for extra in (0, 1, 10, 100):
        enc = _sivi(extra, 5, 2)
        m, se = _surrogate_elbo(lg, enc, x)
        assert (m <= exact + 4 * se).all(), extra
        means.append(m)
        errors.append(se)
    for a, b, sa, sb in zip(means, means[1:], errors, errors[1:], strict=False):
        assert (b >= a - 4 * torch.hypot(sa, sb)).all()  # never falls, beyond the noise
    rise = means[-1] - means[0]
    assert (rise > 4 * torch.hypot(errors[-1], errors[0])).all()  # and does rise


def test_the_mixture_density_is_the_gaussian_one_when_the_mixing_is_a_point():
    """With the noise's weights at zero, psi = mu(x) for every draw: q_J is the Gaussian
    N(mu(x), sigma^2(x)) whatever J."""
    enc = _sivi(7, 5, 2)
    with torch.no_grad():
        enc.mixer[0].weight[:, 5:].zero_()  # the noise's columns
    x = torch.randn(3, 5, dtype=torch.float64)
    q = enc(x)
    z, log_q = rsample_and_log_prob(q, 11)
    mu = q.mixing(1)[0]
    gauss = torch.distributions.Normal(mu, q.scale).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, gauss)


def test_sivi_trains_and_is_evaluated_like_every_posterior(tmp_path):
    import dgm

    cfg = {
        "model": {"posterior": "sivi:5", "hidden": [32], "latent_dim": 4, "sivi_eval_draws": 50},
        "data": {"train_limit": 300, "test_limit": 40},
        "train": {"epochs": 2, "batch_size": 50},
    }
    run = dgm.fit(cfg, out=tmp_path / "run")
    assert run.posterior.extra == 5 and not run.posterior.training  # evaluation: 50 draws
    r = run.evaluate(k=50, seed=0)
    assert r["log_likelihood"] >= r["elbo"] - 1e-6 and math.isfinite(r["log_likelihood"])
    assert run.metrics[-1]["test_elbo"] < 0


@pytest.mark.parametrize("posterior", ["gaussian", "iaf:2", "planar:3", "sivi:4"])
def test_memory_counts_are_the_built_posteriors_parameters(posterior):
    config = validate({"model": {"posterior": posterior, "hidden": [30, 20]}})
    counted = sum(p.parameters for p in counts.networks(config, 784, 100))
    built = sum(
        p.numel()
        for m in (build_model(config.model, 784), build_posterior(config, 784, 100))
        for p in m.parameters()
    )
    assert counted == built


@pytest.mark.parametrize(
    ("posterior", "message"), [("sivi:x", "sivi:J"), ("sivi:-1", "sivi:J"), ("sivi:20000", "10000")]
)
def test_a_bad_sivi_posterior_is_one_line(posterior, message):
    with pytest.raises(ConfigError, match=message):
        validate({"model": {"posterior": posterior}})
