"""GANs: the game's value against the optimal discriminator is 2 JS - log 4; the losses equal
their formulas; WGAN-GP's penalty is exact on critics with known gradients; a step updates the
discriminator(s) before the generator, skips non-finite updates, resumes bit for bit; a tiny
GAN moves its samples toward the data."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from dgm.methods.adversarial import (
    WGANGP,
    AdversarialLoss,
    AdversarialMethod,
    Minimax,
    NonSaturating,
)
from dgm.models.gan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator

f64 = torch.float64


class Squeeze(nn.Module):
    """A critic from a network with one output: (B, D) -> (B,)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).squeeze(-1)


class HalfSquaredNorm(nn.Module):
    """D(x) = ||x||^2 / 2, whose gradient is x."""

    def forward(self, x):
        return 0.5 * x.pow(2).sum(-1)


# -- (1) the optimal discriminator and the Jensen-Shannon divergence -------------------------------
def kl(p, q):
    return (p * (p / q).log()).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minimax_value_at_optimal_discriminator_is_2js_minus_log4(seed):
    """On discrete p_data, p_g over 12 atoms: D* = p / (p + q) (logit log p - log q) minimizes
    the expected discriminator loss, and -(that minimum) = E_p log D* + E_q log(1 - D*) equals
    2 JS(p || q) - log 4 (Goodfellow et al. 2014, theorem 1), in closed form."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(12, generator=g, dtype=f64) + 0.05
    q = torch.rand(12, generator=g, dtype=f64) + 0.05
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    js = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    loss = Minimax()
    inf = torch.full((12,), math.inf, dtype=f64)

    def expected_d_loss(logit):  # E_p[-log D] + E_q[-log(1 - D)], each side alone
        real_term = loss.discriminator_loss(logit, -inf)  # softplus(-l) + softplus(-inf) = 0
        fake_term = loss.discriminator_loss(inf, logit)
        return (p * real_term).sum() + (q * fake_term).sum()

    logit = (p.log() - q.log()).requires_grad_()  # D* = sigmoid(logit) = p / (p + q)
    value = -expected_d_loss(logit)
    torch.testing.assert_close(value, 2 * js - math.log(4), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(expected_d_loss(logit), logit)  # D* is stationary ...
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-15)
    for _ in range(5):  # ... and, the loss being convex in the logits, the minimum
        other = logit.detach() + 0.3 * torch.randn(12, generator=g, dtype=f64)
        assert expected_d_loss(other) > expected_d_loss(logit.detach())
    # the generator's minimax loss against D* is the fake half of the value
    g_value = (q * loss.generator_loss(logit.detach())).sum()
    torch.testing.assert_close(g_value, (q * (1 - torch.sigmoid(logit.detach())).log()).sum())
    assert 0 < js < math.log(2)


def test_minimax_value_is_minus_log4_when_the_generator_matches():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=f64)
    d_star = p / (p + p)  # 1/2 everywhere
    logit = torch.logit(d_star)
    real = Minimax().discriminator_loss(logit, torch.full_like(logit, -math.inf))
    fake = Minimax().discriminator_loss(torch.full_like(logit, math.inf), logit)
    torch.testing.assert_close(
        -(p * real).sum() - (p * fake).sum(), torch.tensor(-math.log(4), dtype=f64)
    )


# -- (2) the losses' formulas ----------------------------------------------------------------------
LOGITS = torch.tensor([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0], dtype=f64)


def test_minimax_and_nonsaturating_values_are_their_formulas():
    """-log sigma(r) = log(1 + e^-r), -log(1 - sigma(f)) = log(1 + e^f) (float64, |l| <= 30);
    at moderate logits also the naive -log sigma(r) - log(1 - sigma(f)), which at |l| = 30
    loses three digits to the cancellation in 1 - sigma(30)."""
    r, f = LOGITS, LOGITS.flip(0)
    d_expected = torch.log1p(torch.exp(-r)) + torch.log1p(torch.exp(f))
    moderate = (r.abs() < 5) & (f.abs() < 5)
    naive = -torch.sigmoid(r).log() - (1 - torch.sigmoid(f)).log()
    for loss in (Minimax(), NonSaturating()):
        d = loss.discriminator_loss(r, f)
        torch.testing.assert_close(d, d_expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(d[moderate], naive[moderate], rtol=1e-12, atol=0)
        assert loss.discriminator_terms(r, f).keys() == {"d_loss"}
    torch.testing.assert_close(Minimax().generator_loss(f), -torch.log1p(torch.exp(f)))
    torch.testing.assert_close(NonSaturating().generator_loss(f), torch.log1p(torch.exp(-f)))
    torch.testing.assert_close(
        NonSaturating().generator_loss(f[moderate]), -torch.sigmoid(f[moderate]).log()
    )


def test_losses_are_stable_at_extreme_logits():
    """float32 logits of +-200: the naive log sigmoid is -inf there; softplus is exact."""
    big = torch.tensor([-200.0, 200.0])
    d = Minimax().discriminator_loss(big, big.flip(0))  # both examples badly classified
    torch.testing.assert_close(d, torch.tensor([400.0, 0.0]))
    torch.testing.assert_close(NonSaturating().generator_loss(big), torch.tensor([200.0, 0.0]))
    torch.testing.assert_close(Minimax().generator_loss(big), torch.tensor([0.0, -200.0]))


def test_generator_gradients_share_sign_but_minimax_saturates():
    """d/df of log(1 - sigma(f)) is -sigma(f); of -log sigma(f), -sigma(-f): both negative
    (both raise D(G(z))), their ratio is e^f, and where D(G(z)) is small the minimax one
    vanishes while the non-saturating one stays near -1."""
    f = LOGITS.clone().requires_grad_()
    (g_mm,) = torch.autograd.grad(Minimax().generator_loss(f).sum(), f)
    (g_ns,) = torch.autograd.grad(NonSaturating().generator_loss(f).sum(), f)
    torch.testing.assert_close(g_mm, -torch.sigmoid(LOGITS))
    torch.testing.assert_close(g_ns, -torch.sigmoid(-LOGITS))
    assert (g_mm < 0).all() and (g_ns < 0).all()
    torch.testing.assert_close(g_mm / g_ns, LOGITS.exp())
    small = LOGITS < -2  # D(G(z)) < 0.12
    assert (g_mm[small].abs() < 0.05).all() and (g_ns[small].abs() > 0.95).all()


def test_wgan_gp_values_are_their_formulas():
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(3, 1).double()
    critic = Squeeze(linear)
    x_real, x_fake = torch.randn(5, 3, generator=g, dtype=f64), torch.rand(5, 3, dtype=f64)
    r, f = critic(x_real), critic(x_fake)
    loss = WGANGP(lam=2.5)
    terms = loss.discriminator_terms(r, f, x_real, x_fake, critic)
    penalty = 2.5 * (linear.weight.norm() - 1) ** 2
    torch.testing.assert_close(terms["wasserstein"], r - f)
    torch.testing.assert_close(terms["penalty"], penalty.expand(5))
    torch.testing.assert_close(terms["d_loss"], f - r + penalty)
    torch.testing.assert_close(loss.generator_loss(f), -f)
    assert (WGANGP().lam, WGANGP().critic_steps) == (10.0, 5)
    with pytest.raises(ValueError, match="needs"):
        loss.discriminator_loss(r, f)


# -- (3) the gradient penalty ----------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.2, 1.0, 3.0])
def test_penalty_on_a_linear_critic_is_lam_times_norm_minus_one_squared(scale):
    """grad_x (w.x + b) = w everywhere, so the penalty is lam (||w|| - 1)^2 at any interpolate;
    its gradient in w (a double backward) is 2 lam (||w|| - 1) w / ||w||."""
    g = torch.Generator().manual_seed(1)
    linear = nn.Linear(6, 1).double()
    with torch.no_grad():
        linear.weight.mul_(scale / linear.weight.norm())
    x_real, x_fake = (
        torch.randn(8, 6, generator=g, dtype=f64),
        torch.randn(8, 6, generator=g, dtype=f64),
    )
    penalty = WGANGP(lam=10.0).penalty(Squeeze(linear), x_real, x_fake)
    w = linear.weight.detach()
    expected = 10.0 * (w.norm() - 1) ** 2
    torch.testing.assert_close(penalty, expected.expand(8), rtol=1e-12, atol=1e-14)
    (grad_w,) = torch.autograd.grad(penalty.mean(), linear.weight)
    torch.testing.assert_close(grad_w, 2 * 10.0 * (w.norm() - 1) * w / w.norm())
    with torch.no_grad():  # its value alone under no_grad (evaluation)
        torch.testing.assert_close(
            WGANGP().penalty(Squeeze(linear), x_real, x_fake), penalty.detach()
        )


def test_penalty_is_taken_at_the_interpolates():
    """D(x) = ||x||^2/2 has gradient x, so the penalty is lam (||x_hat|| - 1)^2 with
    x_hat = eps x + (1 - eps) x~, eps ~ U(0, 1) per example (here from a seeded generator)."""
    g = torch.Generator().manual_seed(2)
    x_real, x_fake = (
        torch.randn(7, 4, generator=g, dtype=f64),
        torch.randn(7, 4, generator=g, dtype=f64),
    )
    penalty = WGANGP(lam=3.0).penalty(
        HalfSquaredNorm(), x_real, x_fake, torch.Generator().manual_seed(5)
    )
    eps = torch.rand(7, 1, generator=torch.Generator().manual_seed(5), dtype=f64)
    x_hat = eps * x_real + (1 - eps) * x_fake
    torch.testing.assert_close(penalty, 3.0 * (x_hat.norm(dim=-1) - 1) ** 2)


# -- the networks ----------------------------------------------------------------------------------
def test_networks_map_shapes_and_pixels_lie_in_the_unit_interval():
    z = torch.randn(5, 16)
    for G in (DCGANGenerator(16, widths=(8, 4)), MLPGenerator(16, [32])):
        x = G(z)
        assert x.shape == (5, 784) and (x >= 0).all() and (x <= 1).all()
        z_s, x_s = G.sample(3)
        assert z_s.shape == (3, 16) and x_s.shape == (3, 784)
        assert G.prior().event_shape == (16,)
    for D in (
        DCGANDiscriminator(widths=(4, 8)),
        DCGANDiscriminator(widths=(4, 8), norm=None),
        DCGANDiscriminator(widths=(4, 8), norm=lambda c: nn.GroupNorm(1, c)),
        MLPDiscriminator([32]),
    ):
        assert D(torch.rand(5, 784)).shape == (5,)
    # the layer sizes of Radford et al.: 7x7 -> 14x14 -> 28x28 in G, the reverse in D
    G = DCGANGenerator(16, widths=(8, 4))
    h = G.project(z).view(5, 8, 7, 7)
    assert G.deconv[:3](h).shape == (5, 4, 14, 14)
    D = DCGANDiscriminator(widths=(4, 8))
    assert D.conv[:2](torch.rand(5, 1, 28, 28)).shape == (5, 4, 14, 14)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.conv[:2])  # not on the input layer


def test_observation_is_a_gaussian_around_the_generator():
    G = MLPGenerator(4, [8], data_dim=10).double()
    z, x = torch.randn(3, 4, dtype=f64), torch.rand(3, 10, dtype=f64)
    obs = G.observation(z, 0.1)
    assert obs.batch_shape == (3,) and obs.event_shape == (10,)
    expected = Normal(G(z), 0.1).log_prob(x).sum(-1)
    torch.testing.assert_close(obs.log_prob(x), expected)
    by_hand = -0.5 * ((x - G(z)) / 0.1).pow(2).sum(-1) - 10 * math.log(0.1 * math.sqrt(2 * math.pi))
    torch.testing.assert_close(obs.log_prob(x), by_hand)


# -- (4) one step ----------------------------------------------------------------------------------
def small_method(loss: AdversarialLoss, seed: int = 0, **kwargs) -> AdversarialMethod:
    torch.manual_seed(seed)
    G = MLPGenerator(3, [8], data_dim=5)
    D = MLPDiscriminator([8], data_dim=5)
    return AdversarialMethod(G, D, loss, latent_dim=3, lr=1e-2, **kwargs)


def snapshot(module):
    return [t.detach().clone() for t in module.state_dict().values()]


def same(module, saved):
    return all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), saved, strict=True))


@pytest.mark.parametrize("loss", [NonSaturating(), WGANGP(critic_steps=3)])
def test_step_updates_the_discriminator_first_and_counts_optimizer_steps(loss):
    """Every discriminator update happens with G unchanged; the generator's update comes
    after, and its gradient is that of g_loss against the updated discriminator."""
    m = small_method(loss)
    g0, d0 = snapshot(m.generator), snapshot(m.discriminator)
    events, draws = [], []
    noise = m.noise
    m.noise = lambda n: draws.append(noise(n)) or draws[-1]

    def on_g_step(optimizer, args, kwargs):
        z = draws[-1]  # the generator step's draw
        g_loss = m.loss.generator_loss(m.discriminator(m.generator(z))).mean()
        grads = torch.autograd.grad(g_loss, m.g_params)
        assert all(torch.allclose(p.grad, gr) for p, gr in zip(m.g_params, grads, strict=True))
        events.append(("g", same(m.generator, g0), same(m.discriminator, d0)))

    m.d_optimizer.register_step_pre_hook(
        lambda *a: events.append(("d", same(m.generator, g0), same(m.discriminator, d0)))
    )
    m.g_optimizer.register_step_pre_hook(on_g_step)
    x = torch.rand(16, 5)
    (outcome,) = m.step(x, torch.arange(16), 0)
    n = loss.critic_steps
    assert events == [("d", True, True)] + [("d", True, False)] * (n - 1) + [("g", True, False)]
    assert len(draws) == n + 1 and all(z.shape == (16, 3) for z in draws)
    assert all(m.d_optimizer.state[p]["step"].item() == n for p in m.d_params)
    assert all(m.g_optimizer.state[p]["step"].item() == 1 for p in m.g_params)
    assert outcome.fault is None and tuple(outcome.metrics) == m.metric_names
    assert all(v.shape == (16,) and not v.requires_grad for v in outcome.metrics.values())
    assert not same(m.generator, g0)
    assert all(p.grad is None for p in [*m.g_params, *m.d_params])


def test_metric_names_and_critic_steps():
    assert small_method(NonSaturating()).metric_names == ("d_loss", "g_loss")
    w = small_method(WGANGP())
    assert w.metric_names == ("d_loss", "g_loss", "wasserstein", "penalty")
    assert (w.shown_metric, w.critic_steps) == ("wasserstein", 5)
    assert small_method(WGANGP(), critic_steps=2).critic_steps == 2
    with pytest.raises(ValueError, match="latent_dim"):
        AdversarialMethod(MLPGenerator(3, [4], data_dim=5), MLPDiscriminator([4], 5), Minimax(), 4)


class InfiniteGeneratorLoss(NonSaturating):
    def generator_loss(self, fake_logits):
        return fake_logits * math.inf


class NaNGradient(NonSaturating):
    def discriminator_loss(self, real_logits, fake_logits, *args):
        return torch.sqrt(0 * real_logits)  # value 0, gradient 0 / (2 sqrt 0) = NaN


@pytest.mark.parametrize(
    "loss, fault",
    [(NonSaturating(), "d_loss"), (WGANGP(critic_steps=2), "wasserstein")],
)
def test_a_nonfinite_discriminator_loss_skips_the_step(loss, fault):
    m = small_method(loss)
    g0, d0 = snapshot(m.generator), snapshot(m.discriminator)
    x = torch.rand(4, 5)
    x[1, 2] = math.nan
    (outcome,) = m.step(x, torch.arange(4), 7)
    assert (outcome.step, outcome.metrics, outcome.fault) == (7, None, fault)
    assert same(m.generator, g0) and same(m.discriminator, d0)
    assert not m.d_optimizer.state and not m.g_optimizer.state


def test_a_nonfinite_gradient_or_generator_loss_is_named():
    m = small_method(NaNGradient())
    d0 = snapshot(m.discriminator)
    assert m.step(torch.rand(4, 5), torch.arange(4), 0)[0].fault == "discriminator gradient"
    assert same(m.discriminator, d0) and not m.d_optimizer.state
    m = small_method(InfiniteGeneratorLoss())
    g0 = snapshot(m.generator)
    outcome = m.step(torch.rand(4, 5), torch.arange(4), 0)[0]
    assert (outcome.metrics, outcome.fault) == (None, "g_loss")
    assert same(m.generator, g0) and not m.g_optimizer.state  # the critic's update stands
    assert all(p.grad is None for p in m.g_params)


# -- (5) exact resume ------------------------------------------------------------------------------
def dcgan_method(loss: AdversarialLoss, seed: int) -> AdversarialMethod:
    torch.manual_seed(seed)
    norm = nn.BatchNorm2d if not isinstance(loss, WGANGP) else (lambda c: nn.GroupNorm(1, c))
    return AdversarialMethod(
        DCGANGenerator(6, widths=(4, 3)), DCGANDiscriminator((3, 4), norm=norm), loss, 6, lr=1e-3
    )


@pytest.mark.parametrize("loss", [NonSaturating(), WGANGP(critic_steps=2)])
def test_resume_is_bit_identical(loss):
    """N steps in one go equal k steps, a checkpoint (modules, optimizers, the global RNG),
    fresh objects restored from it, and N - k more: every parameter, buffer and moment."""
    gen = torch.Generator().manual_seed(3)
    batches = [torch.rand(8, 784, generator=gen) for _ in range(4)]
    index = torch.arange(8)
    whole = dcgan_method(loss, seed=0)
    torch.manual_seed(11)
    for i, x in enumerate(batches):
        whole.step(x, index, i)

    first = dcgan_method(loss, seed=0)
    torch.manual_seed(11)
    for i, x in enumerate(batches[:2]):
        first.step(x, index, i)
    first.evaluate(batches[0])  # evaluation between epochs leaves the stream alone
    first.fixed_samples()
    saved = copy.deepcopy(
        (first.checkpoint_modules(), first.optimizer_state(), torch.get_rng_state())
    )
    del first
    resumed = dcgan_method(loss, seed=99)  # other weights, other RNG: all must be restored
    modules, optimizers, rng = saved
    for module, state in resumed.restorable(modules):
        module.load_state_dict(state)
    resumed.load_optimizer_state(optimizers)
    torch.set_rng_state(rng)
    for i, x in enumerate(batches[2:], start=2):
        resumed.step(x, index, i)

    for name, state in whole.checkpoint_modules().items():
        other = resumed.checkpoint_modules()[name]
        assert all(torch.equal(state[k], other[k]) for k in state), name
    for name, state in whole.optimizer_state().items():
        a, b = state["state"], resumed.optimizer_state()[name]["state"]
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i]), name


def test_checkpoint_keys_and_optimizer_state_that_does_not_fit():
    m = small_method(NonSaturating())
    assert set(m.checkpoint_modules()) == {"generator", "discriminator"}
    assert set(m.optimizer_state()) == {"generator", "discriminator"}
    with pytest.raises(ValueError, match="generator/discriminator"):
        m.load_optimizer_state({"global": m.optimizer_state()["generator"]})
    m.set_lr(0.123)
    assert all(
        group["lr"] == 0.123 for opt in (m.g_optimizer, m.d_optimizer) for group in opt.param_groups
    )


# -- evaluation and the sample grid ----------------------------------------------------------------
@pytest.mark.parametrize("loss", [Minimax(), WGANGP()])
def test_evaluate_is_repeatable_and_leaves_the_global_rng_alone(loss):
    m = dcgan_method(loss, seed=0)
    x = torch.rand(30, 784)
    m.eval_batch_size = 12  # three chunks
    state = torch.get_rng_state()
    first = m.evaluate(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == m.evaluate(x)
    expected = {"test_d_loss", "test_g_loss"} | {f"test_{n}" for n in loss.extra_metrics}
    assert set(first) == expected and all(math.isfinite(v) for v in first.values())
    assert m.generator.training and m.discriminator.training  # modes restored
    if isinstance(loss, WGANGP):
        lhs = first["test_d_loss"]
        torch.testing.assert_close(lhs, first["test_penalty"] - first["test_wasserstein"])


def test_fixed_samples_come_from_the_seed():
    a, b = small_method(NonSaturating(), seed=0), small_method(NonSaturating(), seed=0)
    assert a.fixed_noise.shape == (64, 3)
    state = torch.get_rng_state()
    torch.testing.assert_close(a.fixed_samples(), b.fixed_samples(), rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)
    m = dcgan_method(NonSaturating(), seed=0)
    assert m.fixed_samples().shape == (64, 784)
    other = AdversarialMethod(
        MLPGenerator(3, [8], 5), MLPDiscriminator([8], 5), Minimax(), 3, seed=1
    )
    assert not torch.equal(other.fixed_noise, a.fixed_noise)


# -- (6) a tiny GAN learns a Gaussian --------------------------------------------------------------
def moments_after_training(method, mu, sigma, steps, batch):
    dim = mu.shape[0]
    with torch.no_grad():
        before = method.generator.sample(4096)[1]
    for i in range(steps):
        x = mu + sigma * torch.randn(batch, dim)
        assert method.step(x, torch.arange(batch), i)[0].fault is None
    with torch.no_grad():
        after = method.generator.sample(4096)[1]
    return before, after


@pytest.mark.parametrize(
    "loss, dim, steps, lr, betas",
    [(NonSaturating(), 1, 300, 2e-3, (0.5, 0.999)), (WGANGP(), 2, 150, 2e-3, (0.5, 0.9))],
)
def test_a_tiny_gan_moves_toward_the_data(loss, dim, steps, lr, betas):
    """Data N(mu, 0.08^2 I) inside (0, 1); the generator starts near 1/2 with a small spread.
    After training the mean's error is below 0.1 and at most half its start, and the spread
    within a factor of 2.5 of 0.08 (4096 samples: the moments' standard errors are ~0.001).
    (WGAN-GP in 2-D: in 1-D a critic with slope -1 is a local minimum of the penalized loss.)"""
    torch.manual_seed(5)
    G, D = MLPGenerator(2, [16], data_dim=dim), MLPDiscriminator([32], data_dim=dim)
    m = AdversarialMethod(G, D, loss, latent_dim=2, lr=lr, betas=betas)
    mu, sigma = torch.tensor([0.75, 0.3][:dim]), 0.08
    before, after = moments_after_training(m, mu, sigma, steps, batch=128 if dim == 1 else 64)
    error_before = (before.mean(0) - mu).norm()
    error_after = (after.mean(0) - mu).norm()
    assert error_after < 0.1 and error_after < 0.5 * error_before
    std = after.std(0)
    assert ((std > sigma / 2.5) & (std < sigma * 2.5)).all(), std
