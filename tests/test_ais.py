"""AIS and BDMC against the linear-Gaussian model, whose log p(x) is known in closed form."""

import pytest
import torch

from dgm.ais import ais_log_likelihood, bdmc, sigmoid_schedule
from tests.linear_gaussian import LinearGaussian


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian(D=5, d=2, sigma=0.5, seed=3)


def test_the_schedule_goes_from_zero_to_one_and_rises():
    beta = sigmoid_schedule(50)
    assert beta[0] == 0 and beta[-1] == 1 and beta.shape == (51,)
    assert (beta[1:] > beta[:-1]).all()


def gap_and_se(lg, x, **options):
    """The mean of exact - AIS over the examples, and its standard error."""
    est = ais_log_likelihood(lg.model, x, **options).log_likelihood
    diff = lg.log_px(x) - est  # (B,)
    return diff.mean().item(), (diff.std() / diff.numel() ** 0.5).item()


def test_ais_recovers_the_exact_log_likelihood_and_converges(lg):
    """With 300 temperatures and 8 chains the estimate is the exact log p(x) within 4 standard
    errors (over 64 examples); with 3 temperatures and one chain it is far below (a lower bound
    in expectation, loose with little annealing)."""
    x = lg.sample_x(64, seed=7)
    torch.manual_seed(0)
    gap, se = gap_and_se(lg, x, steps=300, chains=8, leapfrog=5, step_size=0.1)
    assert abs(gap) <= 4 * se + 0.01, (gap, se)
    torch.manual_seed(0)
    loose, loose_se = gap_and_se(lg, x, steps=3, chains=1, leapfrog=5, step_size=0.1)
    assert loose > abs(gap) + 4 * (se + loose_se), (loose, gap)  # converges as T grows


def test_bdmc_sandwiches_the_truth(lg):
    """On data simulated from the model, forward AIS is below the mean exact log p(x) and
    reverse AIS above it (within their standard errors), and the gap narrows with T."""
    torch.manual_seed(1)
    short = bdmc(lg.model, 64, steps=5, chains=2, leapfrog=5, step_size=0.1)
    torch.manual_seed(1)
    z = lg.model.prior().sample((64,))
    x = lg.model.likelihood(z).sample()
    exact = lg.log_px(x).mean().item()
    assert (
        short["lower"] - 4 * short["lower_stderr"]
        <= exact
        <= short["upper"] + 4 * short["upper_stderr"]
    )
    assert short["gap"] > 4 * short["gap_stderr"]
    torch.manual_seed(1)
    long = bdmc(lg.model, 64, steps=300, chains=2, leapfrog=5, step_size=0.1)
    assert (
        long["lower"] - 4 * long["lower_stderr"]
        <= exact
        <= long["upper"] + 4 * long["upper_stderr"]
    )
    assert long["gap"] >= -4 * long["gap_stderr"]  # the upper bound above the lower
    assert long["gap"] < short["gap"] / 3


def test_hmc_accepts_at_about_the_target_rate(lg):
    x = lg.sample_x(16, seed=2)
    torch.manual_seed(3)
    result = ais_log_likelihood(lg.model, x, steps=200, chains=4, leapfrog=5, step_size=0.5)
    assert 0.5 < result.acceptance < 0.85
