"""Diffusion models: the forward chain, its posterior, the ELBO and its random-t estimate, the
simple loss's weights, DDIM, and the method's training step (skips, exact resume).

Monte Carlo comparisons use 4 standard errors; exact identities are checked in float64.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributions import kl_divergence

from dgm.methods.diffusion import DiffusionMethod
from dgm.models.denoisers import MLPDenoiser, UNet
from dgm.models.diffusion import CosineSchedule, GaussianDiffusion, LinearSchedule, NoiseSchedule
from dgm.models.diffusion_decoders import BernoulliDecoder, DiscretizedGaussian

F64 = torch.float64
SCHEDULES = [LinearSchedule(200), CosineSchedule(200)]


def padded(schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """beta_t, alpha_t, alpha_bar_t indexed by t = 0..T (beta_0 = 0, alpha_bar_0 = 1),
    recomputed here from the betas alone."""
    beta = torch.cat([torch.zeros(1, dtype=F64), schedule.betas])
    alpha = 1 - beta
    return beta, alpha, torch.cumprod(alpha, 0)


def within(estimate: torch.Tensor, exact: torch.Tensor, se: torch.Tensor, k: float = 4.0) -> bool:
    return bool(((estimate - exact).abs() <= k * se).all())


class LinearEps(nn.Module):
    """epsilon-hat(y, t) = a_t y + b_t: a reverse chain with means linear in y_t."""

    def __init__(self, T: int, dim: int = 1, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.a = nn.Parameter(0.5 * torch.rand(T + 1, generator=g, dtype=F64))
        self.b = nn.Parameter(0.3 * torch.randn(T + 1, generator=g, dtype=F64))

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.a[t].unsqueeze(-1) * y + self.b[t].unsqueeze(-1)


def linear_gaussian_truth(
    schedule: NoiseSchedule, eps: LinearEps, y0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ELBO E_q[log p(y_{0:T}) - log q(y_{1:T} | y_0)] and the exact log p(y_0) of the
    linear-Gaussian reverse chain, for 1-d y0 (B,), from Gaussian integrals over the joint
    moments of q (not from the code's KL decomposition)."""
    beta, alpha, alpha_bar = padded(schedule)
    T = schedule.T
    a, b = eps.a.detach(), eps.b.detach()
    # p(y_{t-1} | y_t) = N(c_t y_t + e_t, s2_t); t = 1 is the Gaussian decoder, s2_1 = beta_1
    k = beta / (1 - alpha_bar).clamp(min=1e-300).sqrt()
    c = (1 - k * a) / alpha.sqrt()
    e = -k * b / alpha.sqrt()
    s2 = torch.cat([beta[:2], (1 - alpha_bar[1:-1]) / (1 - alpha_bar[2:]) * beta[2:]])
    # q given y_0: E y_t = sqrt(alpha_bar_t) y_0, Var y_t = 1 - alpha_bar_t,
    # Cov(y_{t-1}, y_t) = sqrt(alpha_t) Var y_{t-1}
    m = alpha_bar.sqrt().unsqueeze(-1) * y0  # (T + 1, B)
    v = 1 - alpha_bar  # (T + 1,)
    log_p = -0.5 * math.log(2 * math.pi) - 0.5 * (v[T] + m[T] ** 2)  # E log N(y_T; 0, 1)
    for t in range(1, T + 1):
        var = v[t - 1] + c[t] ** 2 * v[t] - 2 * c[t] * alpha[t].sqrt() * v[t - 1]
        sq = var + (m[t - 1] - c[t] * m[t] - e[t]) ** 2
        log_p = log_p - 0.5 * torch.log(2 * math.pi * s2[t]) - 0.5 * sq / s2[t]
    entropy = 0.5 * torch.log(2 * math.pi * math.e * beta[1:]).sum()  # H[q(y_{1:T} | y_0)]
    elbo = log_p + entropy
    mean, var = torch.zeros(()), torch.ones((), dtype=F64)  # the reverse chain's marginals
    for t in range(T, 0, -1):
        mean, var = c[t] * mean + e[t], c[t] ** 2 * var + s2[t]
    exact = -0.5 * torch.log(2 * math.pi * var) - 0.5 * (y0 - mean) ** 2 / var
    return elbo, exact


# -- (1) the forward chain ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
def test_marginals_agree_with_simulating_the_chain(schedule):
    """q(y_t | y_0) in closed form (eq. 4) against y_t = sqrt(alpha_t) y_{t-1} + sqrt(beta_t) z
    simulated step by step: means and variances within 4 standard errors."""
    n = 20_000
    d = GaussianDiffusion(schedule, MLPDenoiser(4, 8, 8).double(), "gaussian")
    y0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=F64).expand(n, 4)
    checked = {1, 20, 100, 200}
    y = y0.clone()
    for t in range(1, schedule.T + 1):
        beta = schedule.betas[t - 1]
        y = (1 - beta).sqrt() * y + beta.sqrt() * torch.randn(n, 4, dtype=F64)
        if t in checked:
            q = d.marginal(y0[:1], torch.tensor([t]))
            mean, var = y.mean(0), y.var(0)
            assert within(mean, q.mean[0], (q.variance[0] / n).sqrt())
            assert within(var, q.variance[0], q.variance[0] * math.sqrt(2 / (n - 1)))


def test_schedules():
    """Linear: endpoints; cosine: alpha_bar = f(t) / f(0) where no beta is clipped (eq. 17)."""
    lin = LinearSchedule(1000)
    assert math.isclose(lin.betas[0].item(), 1e-4) and math.isclose(lin.betas[-1].item(), 0.02)
    cos = CosineSchedule(1000)
    t = torch.arange(1001, dtype=F64)
    f = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    unclipped = cos.betas < 0.999
    assert unclipped[:-1].all()  # only the very last step is clipped
    torch.testing.assert_close(cos.alpha_bar[:-1], (f / f[0])[1:-1], rtol=1e-12, atol=0)
    for s in (lin, cos):
        torch.testing.assert_close(s.alpha_bar, torch.cumprod(1 - s.betas, 0))


# -- (2) the posterior ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [LinearSchedule(10, 0.05, 0.5), CosineSchedule(10)])
@pytest.mark.parametrize("t", [2, 5, 10])
def test_posterior_is_bayes_rule(schedule, t):
    """q(y_{t-1} | y_t, y_0) (eq. 6-7) against q(y_t | y_{t-1}) q(y_{t-1} | y_0) normalized on a
    fine grid, in 1-d: the density pointwise, its mean and its variance."""
    beta, alpha, alpha_bar = padded(schedule)
    d = GaussianDiffusion(schedule, LinearEps(10), "gaussian")
    y0, yt = torch.tensor([[0.7]], dtype=F64), torch.tensor([[-0.4]], dtype=F64)
    u = torch.linspace(-8, 8, 200_001, dtype=F64)
    du = u[1] - u[0]

    def log_normal(x, mean, var):
        return -0.5 * torch.log(2 * math.pi * var) - 0.5 * (x - mean) ** 2 / var

    log_f = log_normal(yt[0, 0], alpha[t].sqrt() * u, beta[t]) + log_normal(
        u, alpha_bar[t - 1].sqrt() * y0[0, 0], 1 - alpha_bar[t - 1]
    )
    log_post = log_f - (torch.logsumexp(log_f, 0) + du.log())  # normalized on the grid
    w = log_post.exp() * du
    mean = (w * u).sum()
    var = (w * (u - mean) ** 2).sum()
    q = d.posterior(y0, yt, torch.tensor([t]))
    torch.testing.assert_close(q.mean[0, 0], mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(q.variance[0, 0], var, rtol=1e-9, atol=0)
    probe = mean + var.sqrt() * torch.linspace(-4, 4, 9, dtype=F64)
    ours = q.log_prob(probe.unsqueeze(-1))
    theirs = (
        log_normal(yt[0, 0], alpha[t].sqrt() * probe, beta[t])
        + log_normal(probe, alpha_bar[t - 1].sqrt() * y0[0, 0], 1 - alpha_bar[t - 1])
        - (torch.logsumexp(log_f, 0) + du.log())
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError):
        d.posterior(y0, yt, torch.tensor([1]))


# -- (3) and (4): the bound on linear-Gaussian chains ---------------------------------------


@pytest.fixture
def linear_chain():
    schedule = LinearSchedule(10, 0.05, 0.4)
    eps = LinearEps(10)
    d = GaussianDiffusion(schedule, eps, "gaussian")
    y0 = torch.tensor([-1.3, 0.2, 0.9], dtype=F64)
    return d, eps, y0


def test_elbo_equals_its_closed_form_and_bounds_log_p(linear_chain):
    """The code's bound (every step summed, one y_t per step) averages to the closed-form
    E_q[log p(y_{0:T}) - log q(y_{1:T} | y_0)] (4 standard errors); that lies below the exact
    log p(y_0) of the linear-Gaussian reverse chain; L_T is the closed-form KL exactly."""
    d, eps, y0 = linear_chain
    elbo, exact = linear_gaussian_truth(d.schedule, eps, y0)
    assert (elbo < exact).all()
    n = 20_000
    x = y0.repeat(n).unsqueeze(-1)  # (n * 3, 1)
    with torch.no_grad():
        draws = d.elbo(x).view(n, 3)
    assert within(draws.mean(0), elbo, draws.std(0) / math.sqrt(n))
    # L_T = KL(N(sqrt(ab_T) y0, 1 - ab_T) || N(0, 1))
    ab_T = d.schedule.alpha_bar[-1]
    kl = 0.5 * (1 - ab_T + ab_T * y0**2 - 1 - torch.log(1 - ab_T))
    torch.testing.assert_close(d.prior_term(y0.unsqueeze(-1)), kl, rtol=1e-12, atol=1e-14)


def test_random_t_estimate_is_unbiased(linear_chain):
    """L_T + T L_{t-1} at t ~ U{1..T} averages to the full -ELBO (closed form)."""
    d, eps, y0 = linear_chain
    elbo, _ = linear_gaussian_truth(d.schedule, eps, y0)
    n = 100_000
    with torch.no_grad():
        draws = d.elbo_terms(y0.repeat(n).unsqueeze(-1)).estimate.view(n, 3)
    assert within(draws.mean(0), -elbo, draws.std(0) / math.sqrt(n))


def test_random_t_estimate_is_unbiased_on_binary_data():
    """Binary data, a nonlinear denoiser: the random-t estimate and the all-steps bound agree
    in mean (4 standard errors of their difference)."""
    d = GaussianDiffusion(LinearSchedule(20, 1e-3, 0.3), MLPDenoiser(8, 16, 8).double())
    x = torch.bernoulli(torch.full((2, 8), 0.5, dtype=F64))
    n = 20_000
    with torch.no_grad():
        random_t = d.elbo_terms(x.repeat(n, 1)).estimate.view(n, 2)
        full = -d.elbo(x.repeat(n, 1), batch_size=n * 40).view(n, 2)
    se = (random_t.var(0) / n + full.var(0) / n).sqrt()
    assert within(random_t.mean(0), full.mean(0), se)


# -- (5) the simple loss's weights ----------------------------------------------------------------


@pytest.mark.parametrize("schedule", [LinearSchedule(100), CosineSchedule(100)])
def test_kl_term_is_weighted_squared_noise_error(schedule):
    """L_{t-1} = w_t ||epsilon - epsilon_theta||^2 with w_t = beta_t^2 / (2 sigma_t^2 alpha_t
    (1 - alpha_bar_t)) and sigma_t^2 = beta-tilde_t (Ho et al. eq. 12), for t >= 2."""
    beta, alpha, alpha_bar = padded(schedule)
    d = GaussianDiffusion(schedule, MLPDenoiser(5, 16, 8).double(), "gaussian")
    t = torch.tensor([2, 3, 10, 50, 99, 100])
    y0 = torch.randn(6, 5, dtype=F64)
    noise = torch.randn(6, 5, dtype=F64)
    yt = d.q_sample(y0, t, noise)
    with torch.no_grad():
        eps_hat = d.denoiser(yt, t)
        kl = kl_divergence(d.posterior(y0, yt, t), d.reverse(yt, t))
        terms = d.elbo_terms(y0, t, noise)
    sigma2 = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * beta[t]
    w = beta[t] ** 2 / (2 * sigma2 * alpha[t] * (1 - alpha_bar[t]))
    weighted = w * (noise - eps_hat).square().sum(-1)
    torch.testing.assert_close(kl, weighted, rtol=1e-8, atol=0)
    torch.testing.assert_close(terms.term, weighted, rtol=1e-8, atol=0)
    torch.testing.assert_close(terms.simple, (noise - eps_hat).square().sum(-1))


# -- decoders at t = 0 ---------------------------------------------------------------------------


def test_bernoulli_decoder_is_the_gaussian_step_on_two_points():
    """P(x_0 = 1 | y_1) = N(1; mu, s^2) / (N(1; mu, s^2) + N(-1; mu, s^2)), and the t = 1 term
    of the bound is -log p(x_0 | y_1)."""
    mu, s = torch.linspace(-1.5, 1.5, 7, dtype=F64), torch.tensor(0.8, dtype=F64)
    v = 1.0
    n_plus, n_minus = (-((v - mu) ** 2) / (2 * s**2)).exp(), (-((-v - mu) ** 2) / (2 * s**2)).exp()
    p = BernoulliDecoder()(mu.unsqueeze(0), s).base_dist.probs[0]
    torch.testing.assert_close(p, n_plus / (n_plus + n_minus), rtol=1e-12, atol=1e-12)
    d = GaussianDiffusion(LinearSchedule(10, 0.05, 0.3), MLPDenoiser(6, 16, 8).double())
    x = torch.bernoulli(torch.full((4, 6), 0.5, dtype=F64))
    t, noise = torch.ones(4, dtype=torch.long), torch.randn(4, 6, dtype=F64)
    with torch.no_grad():
        terms = d.elbo_terms(x, t, noise)
        y1 = d.q_sample(2 * x - 1, t, noise)
        torch.testing.assert_close(terms.term, -d.decoder(y1).log_prob(x))


def test_discretized_gaussian_is_a_distribution_over_the_levels():
    """Over the 256 levels: the masses sum to 1 (tails included), each inner mass is
    Phi(b) - Phi(a), the mean is sum x P(x), and draws are levels with those frequencies."""
    loc = torch.tensor([-1.4, -0.2, 0.0, 0.6, 1.3], dtype=F64).unsqueeze(-1)  # (5, 1)
    scale = torch.tensor([0.01, 0.3, 0.002, 1.0, 0.05], dtype=F64).unsqueeze(-1)
    p = DiscretizedGaussian(loc, scale)
    levels = torch.arange(256, dtype=F64) / 255  # (256,)
    log_p = p.log_prob(levels)  # (5, 256)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(5, dtype=F64), rtol=1e-12, atol=0)
    y = 2 * levels - 1
    naive = torch.special.ndtr((y + 1 / 255 - loc) / scale) - torch.special.ndtr(
        (y - 1 / 255 - loc) / scale
    )
    inner = (naive[:, 1:-1] > 1e-8).nonzero(as_tuple=True)
    torch.testing.assert_close(
        log_p[:, 1:-1][inner], naive[:, 1:-1][inner].log(), rtol=1e-7, atol=0
    )
    torch.testing.assert_close(p.mean[:, 0], (log_p.exp() * levels).sum(-1), rtol=1e-10, atol=1e-12)
    draws = DiscretizedGaussian(loc[1], scale[1]).sample((20_000,))  # (20000, 1)
    assert torch.equal(draws, torch.round(draws * 255) / 255)
    freq = (draws == 0.4).double().mean()  # level 0.4 = 102 / 255: near mu's
    mass = p.log_prob(torch.tensor(102 / 255, dtype=F64))[1].exp()
    assert within(freq, mass, (mass * (1 - mass) / 20_000).sqrt())


def test_grey_level_bound_is_finite():
    d = GaussianDiffusion(LinearSchedule(10, 0.01, 0.3), MLPDenoiser(6, 16, 8), "grey")
    x = torch.randint(0, 256, (3, 6)).float() / 255
    assert torch.isfinite(d.elbo(x)).all()
    assert torch.isfinite(d.elbo_terms(x).estimate).all()
    assert d.sample(2, mean=False).shape == (2, 6)


# -- (6) DDIM ------------------------------------------------------------------------------------


def test_ddim():
    """eta = 0: deterministic given y_T (all steps); eta = 1, s = t - 1: the step's variance is
    beta-tilde_t and its mean the DDPM reverse mean; a shorter subsequence samples too."""
    schedule = LinearSchedule(20, 1e-3, 0.2)
    beta, _, alpha_bar = padded(schedule)
    d = GaussianDiffusion(schedule, MLPDenoiser(6, 16, 8).double())
    y_T = torch.randn(4, 6, dtype=F64)
    torch.manual_seed(1)
    first = d.ddim_sample(4, steps=20, eta=0.0, y_T=y_T)
    torch.manual_seed(2)
    second = d.ddim_sample(4, steps=20, eta=0.0, y_T=y_T)
    assert torch.equal(first, second)
    y = torch.randn(4, 6, dtype=F64)
    with torch.no_grad():
        assert torch.equal(d.ddim_step(y, 5, 4, eta=0.0).variance, torch.zeros_like(y))
        for t in range(2, 21):
            step = d.ddim_step(y, t, t - 1, eta=1.0)
            tilde = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * beta[t]
            torch.testing.assert_close(step.variance, tilde.expand(4, 6), rtol=1e-10, atol=0)
            reverse = d.reverse(y, torch.full((4,), t))
            torch.testing.assert_close(step.mean, reverse.mean, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(step.variance, reverse.variance, rtol=1e-10, atol=0)
    short = d.ddim_sample(3, steps=5, eta=0.5)
    assert short.shape == (3, 6) and ((short >= 0) & (short <= 1)).all()
    assert d.sample(3).shape == (3, 6)


# -- (8) the U-Net -------------------------------------------------------------------------------


def test_unet_shapes_size_and_time():
    net = UNet()
    assert sum(p.numel() for p in net.parameters()) < 1_000_000
    y = torch.randn(3, 784)
    t = torch.tensor([1, 500, 1000])
    assert torch.equal(net(y, t), torch.zeros(3, 784))  # the last convolution starts at zero
    nn.init.normal_(net.out.weight, std=0.1)
    out = net(y, t)
    assert out.shape == (3, 784)
    assert not torch.allclose(net(y[:1], t[:1]), net(y[:1], t[2:]))  # t matters
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


# -- the method: (7) exact resume, (9) skipped steps, evaluation --------------------------------


def make_method(seed: int, objective: str = "elbo", ema: float | None = 0.9) -> DiffusionMethod:
    torch.manual_seed(seed)
    d = GaussianDiffusion(LinearSchedule(50, 1e-3, 0.1), MLPDenoiser(16, 32, 8))
    return DiffusionMethod(d, lr=1e-2, objective=objective, ema=ema, eval_examples=4)


DATA = torch.bernoulli(torch.full((64, 16), 0.4), generator=torch.Generator().manual_seed(3))


def train(method: DiffusionMethod, start: int, stop: int) -> None:
    for s in range(start, stop):
        index = torch.arange(8 * s, 8 * s + 8) % 64
        (outcome,) = method.step(DATA[index], index, s)
        assert outcome.metrics is not None and outcome.metrics["elbo"].shape == (8,)


@pytest.mark.parametrize("objective", ["elbo", "simple"])
def test_exact_resume(objective):
    """N steps straight equal k steps, a checkpoint (modules, optimizer, global RNG) restored
    into a freshly built method, and N - k more steps: bit for bit."""
    straight = make_method(0, objective)
    torch.manual_seed(123)
    train(straight, 0, 12)
    first = make_method(0, objective)
    torch.manual_seed(123)
    train(first, 0, 5)
    modules = copy.deepcopy(first.checkpoint_modules())
    optimizer = copy.deepcopy(first.optimizer_state())
    rng = torch.get_rng_state()
    assert set(modules) == {"denoiser", "ema"} and set(optimizer) == {"denoiser"}
    resumed = make_method(7, objective)  # other initial weights, other RNG state
    for module, state in resumed.restorable(modules):
        module.load_state_dict(state)
    resumed.load_optimizer_state(optimizer)
    torch.set_rng_state(rng)
    train(resumed, 5, 12)
    for name in ("denoiser", "ema"):
        a, b = straight.checkpoint_modules()[name], resumed.checkpoint_modules()[name]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        straight.checkpoint_modules()["ema"]["net.0.weight"],
        straight.checkpoint_modules()["denoiser"]["net.0.weight"],
    )
    with pytest.raises(ValueError):
        resumed.load_optimizer_state({"global": optimizer["denoiser"]})


def test_nonfinite_loss_or_gradient_skips_the_update():
    method = make_method(0, ema=None)
    x, index = DATA[:8], torch.arange(8)
    weight = method.diffusion.denoiser.net[0].weight
    with torch.no_grad():
        weight[0, 0] = float("nan")
    before = copy.deepcopy(method.checkpoint_modules())
    (outcome,) = method.step(x, index, 0)
    assert outcome.metrics is None and outcome.fault == "loss"
    after = method.checkpoint_modules()["denoiser"]
    assert all(
        torch.equal(after[k].nan_to_num(), before["denoiser"][k].nan_to_num()) for k in after
    )
    assert not method.optimizer.state
    method = make_method(0, ema=None)
    bias = method.diffusion.denoiser.net[0].bias
    bias.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = copy.deepcopy(method.checkpoint_modules())
    (outcome,) = method.step(x, index, 0)
    assert outcome.metrics is None and outcome.fault == "gradient"
    after = method.checkpoint_modules()["denoiser"]
    assert all(torch.equal(after[k], before["denoiser"][k]) for k in after)
    assert not method.optimizer.state


def test_evaluate_is_the_full_bound_and_leaves_the_global_rng_alone():
    method = make_method(0, ema=None)
    state = torch.get_rng_state()
    result = method.evaluate(DATA)
    assert torch.equal(torch.get_rng_state(), state)
    assert set(result) == {"test_elbo"} and result == method.evaluate(DATA)
    generator = torch.Generator().manual_seed(method.eval_seed)
    with torch.no_grad():
        expected = method.diffusion.elbo(DATA[:4], generator=generator).mean().item()
    assert math.isclose(result["test_elbo"], expected, rel_tol=1e-6)


def test_unet_method_step():
    d = GaussianDiffusion(LinearSchedule(1000), UNet(channels=16, groups=4))
    method = DiffusionMethod(d, ema=0.999)
    x = torch.bernoulli(torch.full((2, 784), 0.3))
    (outcome,) = method.step(x, torch.arange(2), 0)
    assert outcome.metrics is not None
    assert set(outcome.metrics) == set(method.metric_names) == {"elbo", "simple"}
    assert torch.isfinite(outcome.metrics["elbo"]).all()


def test_the_ema_warms_up_then_decays_at_its_rate():
    """d_s = min(ema, (1 + s) / (10 + s)): the first update moves the average 0.9 of the way to
    the weights; from s = 9,990 on (ema = 0.999) the rate is the configured one."""
    method = make_method(0, ema=0.999)
    assert method.ema_decay_at(0) == 0.1 and method.ema_decay_at(9_990) == 0.999
    before = {k: v.clone() for k, v in method.ema.state_dict().items()}
    method.step(DATA[:4], torch.arange(4), 0)
    for name, p in method.diffusion.denoiser.state_dict().items():
        expected = before[name] + 0.9 * (p - before[name])
        torch.testing.assert_close(method.ema.state_dict()[name], expected)
