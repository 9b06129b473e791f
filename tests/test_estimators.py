"""Gradient estimators against the closed-form ELBO gradient of a linear-Gaussian model.

Each estimator's gradient with respect to (lambda, log eta) is drawn R times at once: a
per-datapoint table with R identical rows, fed R copies of one x, gives R independent estimates
in one backward pass (row r's gradient depends only on row r's samples). Their mean must match
the exact gradient within 4 standard errors, coordinate by coordinate.
"""

import math

import pytest
import torch

from dgm.baselines import LearnedBaseline, LeaveOneOut, RunningMean
from dgm.estimators import Reparameterized, ScoreFunction
from dgm.gradvar import gradient_variance, warm_up_baseline
from dgm.objectives import ELBO
from dgm.variational import LocalGaussian
from tests.linear_gaussian import LinearGaussian

R = 20_000


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian(D=5, d=2, sigma=0.7, seed=3)


def exact_gradient(lg, x, lam, log_eta):
    lam = lam.clone().requires_grad_(True)
    log_eta = log_eta.clone().requires_grad_(True)
    elbo = lg.elbo_closed_form(x[None], lam[None], log_eta.exp()[None]).sum()
    return torch.autograd.grad(elbo, (lam, log_eta))


def estimates(lg, estimator, x, lam, log_eta, r=R):
    """(r, d) gradients of each row's ELBO w.r.t. lambda and log eta."""
    table = LocalGaussian(r, lg.d, sparse=False).double()
    with torch.no_grad():
        table.lam.copy_(lam.expand(r, -1))
        table.log_eta.copy_(log_eta.expand(r, -1))
    xs = x.expand(r, -1)
    est = estimator(lg.model, table(xs, torch.arange(r)), xs)
    g_lam, g_log_eta = torch.autograd.grad(est.surrogate.sum(), (table.lam, table.log_eta))
    return g_lam, g_log_eta, est


def point(lg):
    x = lg.sample_x(1, seed=5)[0]
    lam = torch.tensor([0.4, -0.3], dtype=torch.float64)
    log_eta = torch.tensor([-0.5, 0.2], dtype=torch.float64)
    return x, lam, log_eta


def running_at(c: float) -> RunningMean:
    b = RunningMean().double()
    b.update(torch.tensor(c))
    return b.eval()  # a fixed baseline: no update during the draw


ESTIMATORS = {
    "reparam": lambda: Reparameterized(k=1),
    "reparam-mc-k3": lambda: Reparameterized(ELBO(kl="mc"), k=3),
    "score": lambda: ScoreFunction(k=1),
    "score-mc-k2": lambda: ScoreFunction(ELBO(kl="mc"), k=2),
    "score-running": lambda: ScoreFunction(k=1, baseline=running_at(-9.0)),
    "score-learned": lambda: ScoreFunction(k=1, baseline=LearnedBaseline(5).double()),
    "score-loo-k5": lambda: ScoreFunction(k=5, baseline=LeaveOneOut()),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_is_unbiased_for_the_elbo_gradient(lg, name):
    torch.manual_seed(0)
    x, lam, log_eta = point(lg)
    estimator = ESTIMATORS[name]()
    if isinstance(getattr(estimator, "baseline", None), LearnedBaseline):
        with torch.no_grad():  # an arbitrary input-dependent baseline keeps it unbiased
            estimator.baseline.net[-1].bias.fill_(-7.0)
        estimator.baseline.eval()
    g_lam, g_log_eta, est = estimates(lg, estimator, x, lam, log_eta)
    exact_lam, exact_log_eta = exact_gradient(lg, x, lam, log_eta)
    for g, exact in ((g_lam, exact_lam), (g_log_eta, exact_log_eta)):
        se = g.std(0) / math.sqrt(R)
        assert ((g.mean(0) - exact).abs() < 4 * se).all(), (g.mean(0), exact, se)
    # the logged value is the bound itself, unbiased for the closed-form ELBO
    exact_elbo = lg.elbo_closed_form(x[None], lam[None], log_eta.exp()[None])
    se = est.bound.std() / math.sqrt(R)
    assert (est.bound.mean() - exact_elbo).abs() < 4 * se


def test_score_decoder_gradient_is_the_monte_carlo_average(lg):
    """With the same eps the score and pathwise estimators give theta the same gradient."""
    x, lam, log_eta = point(lg)
    table = LocalGaussian(1, lg.d, sparse=False).double()
    with torch.no_grad():
        table.lam.copy_(lam[None])
        table.log_eta.copy_(log_eta[None])
    grads = []
    for estimator in (Reparameterized(k=4), ScoreFunction(k=4, baseline=LeaveOneOut())):
        torch.manual_seed(11)
        est = estimator(lg.model, table(x[None], torch.arange(1)), x[None])
        grads.append(torch.autograd.grad(est.surrogate.sum(), list(lg.model.parameters())))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_score_estimators_keep_the_true_bound_under_warmup(lg):
    """kl_weight < 1 changes the gradient only; the value is the ELBO of the same samples."""
    x, lam, log_eta = point(lg)
    for estimator in (ScoreFunction(k=3), ScoreFunction(ELBO(kl="mc"), k=3), Reparameterized(k=3)):
        torch.manual_seed(2)
        _, _, full = estimates(lg, estimator, x, lam, log_eta, r=8)
        torch.manual_seed(2)
        table = LocalGaussian(8, lg.d, sparse=False).double()
        warm = estimator(lg.model, table(x.expand(8, -1), torch.arange(8)), x.expand(8, -1), 0.3)
        torch.manual_seed(2)
        cold = estimator(lg.model, table(x.expand(8, -1), torch.arange(8)), x.expand(8, -1))
        assert torch.allclose(warm.surrogate, cold.bound, atol=1e-12)
        assert torch.allclose(full.surrogate, full.bound, atol=1e-12)


def test_reparameterized_gradient_variance_matches_its_closed_form(lg):
    r"""g_lambda = W^T (x - W (lam + eta eps) - b) / sigma^2 - lam, so with orthogonal W
    tr Cov = sum_j (|w_j|^2 / sigma^2)^2 eta_j^2. The sample variance of R draws has relative
    standard error sqrt(2 / (R - 1)) for Gaussian g; allow 4 of them."""
    torch.manual_seed(0)
    x, lam, log_eta = point(lg)
    posterior = LocalGaussian(1, lg.d, sparse=False).double()
    with torch.no_grad():
        posterior.lam.copy_(lam[None])
        posterior.log_eta.copy_(log_eta[None])
    repeats = 4000
    stats = gradient_variance(
        Reparameterized(k=1),
        lg.model,
        posterior,
        x[None],
        [posterior.lam],
        repeats,
        index=torch.arange(1),
    )
    # the batch-means standard error agrees with the Gaussian formula within a factor of 2
    assert 0.5 < stats.variance_se / (stats.variance * math.sqrt(2 / repeats)) < 2
    wtw = (lg.W**2).sum(0) / lg.sigma**2  # (d,)
    exact = (wtw**2 * log_eta.exp() ** 2).sum().item()
    assert abs(stats.variance / exact - 1) < 4 * math.sqrt(2 / (repeats - 1))
    exact_mean = exact_gradient(lg, x, lam, log_eta)[0]
    assert stats.mean_sq_norm == pytest.approx((exact_mean**2).sum().item(), rel=0.02)


def test_variances_are_ordered_as_theory_says(lg):
    """Pathwise < score with a baseline < naive score, at K = 1 and K = 10, each gap larger than
    4 standard errors of the measured variances; and a K-sample average has 1/K the variance.
    q is near the exact posterior (shifted by 0.3, scales x 1.5), as after some training."""
    torch.manual_seed(0)
    x = lg.sample_x(1, seed=5)[0]
    q = lg.perturbed_posterior(0.3, 1.5)(x[None])
    lam, log_eta = q.base_dist.loc[0].detach(), q.base_dist.scale[0].log().detach()
    posterior = LocalGaussian(1, lg.d, sparse=False).double()
    with torch.no_grad():
        posterior.lam.copy_(lam[None])
        posterior.log_eta.copy_(log_eta[None])
    params = [posterior.lam, posterior.log_eta]
    batches = [(x[None], torch.arange(1))]
    stats = {}
    for k in (1, 10):
        for name, est in {
            "reparam": Reparameterized(k=k),
            "score": ScoreFunction(k=k),
            "running": ScoreFunction(k=k, baseline=RunningMean(0.99).double()),
            "loo": ScoreFunction(k=k, baseline=LeaveOneOut()) if k > 1 else None,
        }.items():
            if est is None:
                continue
            warm_up_baseline(est, lg.model, posterior, batches, steps=300)
            stats[name, k] = gradient_variance(
                est, lg.model, posterior, x[None], params, 4000, index=torch.arange(1)
            )

    def below(a, b, scale_b=1.0):
        gap = b.variance * scale_b - a.variance
        return gap > 4 * math.hypot(a.variance_se, b.variance_se * scale_b)

    for k in (1, 10):
        assert below(stats["reparam", k], stats["running", k])
        assert below(stats["running", k], stats["score", k])
    assert below(stats["reparam", 10], stats["loo", 10])
    assert below(stats["loo", 10], stats["score", 10])
    for name in ("reparam", "score"):
        a, b = stats[name, 10], stats[name, 1]
        assert abs(a.variance - b.variance / 10) < 4 * math.hypot(a.variance_se, b.variance_se / 10)


def test_stateful_baselines_subtract_the_state_from_before_the_step():
    """In training mode the baseline b_k must not contain f_k: it is the previous state, and the
    update happens only after b is taken (a baseline that saw the sample is biased)."""
    running = RunningMean(0.9).train()
    b1, _ = running(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(3, 1))
    assert torch.equal(b1, torch.zeros(1, 3))  # nothing seen yet
    b2, _ = running(torch.tensor([[10.0, 20.0, 30.0]]), torch.zeros(3, 1))
    assert torch.equal(b2, torch.full((1, 3), 2.0))  # the first batch's mean, not the update
    assert running.c.item() == pytest.approx(0.9 * 2.0 + 0.1 * 20.0)
    learned = LearnedBaseline(1).train()
    b1, _ = learned(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(3, 1))
    assert torch.equal(b1, torch.zeros(1, 3))
    b2, _ = learned(torch.tensor([[5.0, 5.0, 5.0]]), torch.zeros(3, 1))
    assert torch.allclose(b2, torch.full((1, 3), 2.0))
