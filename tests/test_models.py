"""Likelihoods keep their normalizing constants; the KL in closed form agrees with Monte Carlo."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Laplace, Normal, kl_divergence

from dgm.build import build_model, build_posterior
from dgm.config import Config, ModelConfig
from dgm.distributions import kl_to_prior, normal_kl
from dgm.models import (
    BernoulliLikelihood,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
    StandardNormalPrior,
)
from dgm.nn import MLP, Tanh
from dgm.variational import PointMass


def test_bernoulli_log_prob_is_the_log_mass():
    h = torch.randn(3, 5, dtype=torch.float64)
    x = torch.bernoulli(torch.full((3, 5), 0.5, dtype=torch.float64))
    p = torch.sigmoid(h)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    assert torch.allclose(BernoulliLikelihood()(h).log_prob(x), expected)
    # A mass over {0,1}^D: summing over all 2^D outcomes of one row gives 1.
    grid = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 5)  # (32, 5)
    total = BernoulliLikelihood()(h[0]).log_prob(grid).exp().sum()
    assert torch.allclose(total, torch.tensor(1.0, dtype=torch.float64))


def refs_first(w, h, x):
    ref = Independent(Bernoulli(logits=h, validate_args=False), 1).log_prob(x)
    return torch.autograd.grad((w * ref).sum(), [h, x])


@pytest.mark.parametrize("x_shape", [(4, 6), (3, 4, 6), (6,), (1, 6), (2, 3, 4, 6), (2, 1, 1, 6)])
def test_fused_bernoulli_log_prob_and_gradients_are_torchs(x_shape):
    """Value, gradients (to the logits and to x, with broadcasting) and second derivatives of
    the fused log-mass equal those of Independent(torch's Bernoulli), in float64."""
    g = torch.Generator().manual_seed(0)
    h = (4 * torch.randn(3, 4, 6, generator=g, dtype=torch.float64)).requires_grad_()
    x = torch.rand(x_shape, generator=g, dtype=torch.float64).requires_grad_()  # any x in [0,1]
    ours = BernoulliLikelihood()(h).log_prob(x)
    ref = Independent(Bernoulli(logits=h, validate_args=False), 1).log_prob(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((w * ours).sum() + ours.pow(2).sum(), [h, x], create_graph=True)
    refs = torch.autograd.grad((w * ref).sum() + ref.pow(2).sum(), [h, x], create_graph=True)
    for a, b in zip(grads, refs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second = torch.autograd.grad(grads[0].pow(2).sum(), h)[0]
    second_ref = torch.autograd.grad(refs[0].pow(2).sum(), h)[0]
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=1e-12)
    # first order only (training's backward: in place where x fits in h's shape)
    ours = BernoulliLikelihood()(h).log_prob(x)
    for a, b in zip(
        torch.autograd.grad((w * ours).sum(), [h, x]), refs_first(w, h, x), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.inference_mode():  # the evaluation path
        torch.testing.assert_close(BernoulliLikelihood()(h).log_prob(x), ref.detach())


@pytest.mark.parametrize("d", [1, 2, 37, 112, 784, 3072])
def test_bernoulli_log_mass_in_float32_is_the_float64_softplus_form(d):
    """The evaluation path (products of up to 112 sigmoids, one log each) agrees with
    x.h - sum softplus(h) computed in float64 to float32 rounding, for any D (odd, prime, 784,
    3072), at logits from 0 (every factor 1/2: the smallest products, 2^-112) to +-100."""
    g = torch.Generator().manual_seed(d)
    scales = [0.0, 1.0, 8.0, 100.0]
    h = torch.cat([s * torch.randn(50, d, generator=g) for s in scales])  # (200, D)
    reps = -(-(1 << 16) // (200 * d))  # large enough for the product form (small: softplus)
    h = h.expand(reps, 200, d)
    x = (torch.rand(200, d, generator=g) < 0.3).float()
    with torch.inference_mode():
        ours = BernoulliLikelihood()(h).log_prob(x)
    hd, xd = h.double(), x.double()
    ref = (xd * hd - torch.nn.functional.softplus(hd)).sum(-1)
    assert torch.isfinite(ours).all()
    scale = (xd * hd).abs().sum(-1) + torch.nn.functional.softplus(hd).sum(-1)  # the terms' size
    err = (ours.double() - ref).abs()
    assert (err <= 1e-6 * scale + 1e-5).all(), (err / (scale + 1)).max()
    torch.testing.assert_close(
        ours[:, :50].double(),
        torch.full((h.shape[0], 50), -d * math.log(2), dtype=torch.float64),
        rtol=1e-6,
        atol=0,
    )


def test_fused_bernoulli_under_autocast_and_mixed_dtypes():
    """Under bfloat16 autocast the log-mass stays float32 (a bfloat16 x.h is off by nats), and
    float32 data with float64 logits promote as torch's Bernoulli does."""
    g = torch.Generator().manual_seed(1)
    h = 8 * torch.randn(50, 8, 784, generator=g) - 4  # logits like a trained decoder's
    x = (torch.rand(8, 784, generator=g) < 0.15).float()
    ref = BernoulliLikelihood()(h).log_prob(x)
    with torch.autocast("cpu", torch.bfloat16):
        under = BernoulliLikelihood()(h).log_prob(x)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, ref, rtol=0, atol=1e-3)
    mixed = BernoulliLikelihood()(h.double()).log_prob(x)
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, ref.double(), rtol=0, atol=1e-3)
    expanded = BernoulliLikelihood()(h[0, :1]).expand(torch.Size([8]))
    torch.testing.assert_close(expanded.log_prob(x), BernoulliLikelihood()(h[0, :1]).log_prob(x))


def test_tanh_in_inference_mode_is_tanh():
    a = torch.linspace(-40, 40, 400_001)  # float32, through 0 and both saturations
    with torch.inference_mode():
        fast = Tanh()(a.clone())
    assert (fast - torch.tanh(a)).abs().max() <= 2.4e-7
    assert not torch.equal(fast, torch.tanh(a))  # it is the other formula
    with torch.no_grad():
        assert torch.equal(Tanh()(a), torch.tanh(a))  # elsewhere: torch's own
    b = a[::1000].clone().requires_grad_()
    assert torch.equal(Tanh()(b), torch.tanh(b))


@pytest.mark.parametrize("hidden", [[], [7], [200, 200], [300, 100, 50]])
def test_a_tanh_mlp_in_inference_mode_is_the_same_function(hidden):
    """Under inference_mode a tanh MLP runs as a sigmoid MLP with its weights rescaled; it is
    the same function (float64: to 1e-12; float32: to rounding) and leaves the weights alone."""
    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 3e-6)):
        mlp = MLP(50, hidden, 784).to(dtype)
        with torch.no_grad():
            for p in mlp.parameters():
                p.mul_(3)  # saturate some units
        before = [p.clone() for p in mlp.parameters()]
        x = 2 * torch.randn(13, 5, 50, dtype=dtype)
        ref = mlp(x)
        with torch.inference_mode():
            fast = mlp(x)
        assert fast.shape == ref.shape
        torch.testing.assert_close(fast, ref.detach(), rtol=0, atol=tol * ref.abs().max().item())
        assert all(torch.equal(p, q) for p, q in zip(mlp.parameters(), before, strict=True))
    relu = MLP(50, [20], 10, activation="relu")
    x = torch.randn(4, 50)
    with torch.inference_mode():
        assert torch.equal(relu(x), relu[2](relu[1](relu[0](x))))


@pytest.mark.parametrize("sigma", [1.0, 0.3])
def test_gaussian_log_prob_keeps_its_constant(sigma):
    mu = torch.randn(4, 6, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    expected = -0.5 * 6 * math.log(2 * math.pi * sigma**2) - ((x - mu) ** 2).sum(-1) / (
        2 * sigma**2
    )
    assert torch.allclose(GaussianLikelihood(sigma)(mu).log_prob(x), expected)


def test_learned_gaussian_has_a_floor_and_the_right_density():
    lik = LearnedGaussianLikelihood(min_scale=0.05)
    h = torch.cat([torch.zeros(2, 3), torch.full((2, 3), -50.0)], -1).double()
    p = lik(h)
    assert torch.allclose(p.base_dist.scale, torch.full((2, 3), 0.05, dtype=torch.float64))
    expected = Independent(Normal(torch.zeros(2, 3).double(), 0.05), 1).log_prob(torch.zeros(2, 3))
    assert torch.allclose(p.log_prob(torch.zeros(2, 3).double()), expected)
    assert lik.param_size(784) == 2 * 784


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    lam = torch.randn(6, 4, generator=g, dtype=torch.float64)
    eta = torch.rand(6, 4, generator=g, dtype=torch.float64) + 0.2
    q = Independent(Normal(lam, eta), 1)
    p = StandardNormalPrior(4).double()()
    analytic = kl_divergence(q, p)  # (6,)
    closed = 0.5 * (eta**2 + lam**2 - 1 - 2 * eta.log()).sum(-1)
    assert torch.allclose(analytic, closed)
    z = q.sample((100_000,))
    log_ratio = q.log_prob(z) - p.log_prob(z)  # (S, 6)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    assert ((mc - analytic).abs() < 4 * se).all()


def test_model_and_posterior_shapes_and_distributions():
    cfg = ModelConfig(latent_dim=3, hidden=[16, 8])
    model, posterior = build_model(cfg, 20), build_posterior(Config(model=cfg), 20, 100)
    assert [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)] == [8, 16, 20]
    x = torch.bernoulli(torch.full((5, 20), 0.3))
    q = posterior(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    z = q.rsample((7,))
    assert model.likelihood(z).batch_shape == (7, 5)
    assert model.log_joint(x, z).shape == (7, 5)


def test_point_mass_is_the_autoencoder_code():
    loc = torch.randn(4, 3, requires_grad=True)
    q = PointMass(loc)
    z = q.rsample((2,))
    assert z.shape == (2, 4, 3) and torch.equal(z[1], loc.detach())
    z.sum().backward()
    assert torch.equal(loc.grad, torch.full((4, 3), 2.0))
    assert torch.equal(q.log_prob(loc.detach()), torch.zeros(4))
    ae = build_posterior(Config(model=ModelConfig(kind="ae", latent_dim=3, hidden=[8])), 10, 5)
    assert isinstance(ae(torch.zeros(2, 10)), PointMass)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        MLP(2, [3], 4, activation="sigmoidish")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned"])
def test_output_bias_starts_the_likelihood_at_the_data_mean(likelihood):
    cfg = ModelConfig(latent_dim=3, hidden=[8], likelihood=likelihood)
    model = build_model(cfg, 6)
    x_mean = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0, 0.3])
    model.init_output_bias(x_mean)
    last = [m for m in model.decoder if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()  # with no dependence on z, p(x | z) is the bias's distribution
    mean = model.likelihood(torch.randn(2, 3)).mean
    expected = x_mean.clamp(1e-3, 1 - 1e-3) if likelihood == "bernoulli" else x_mean
    assert torch.allclose(mean, expected.expand(2, 6), atol=1e-6)


def test_standard_normal_prior_log_prob_is_torchs_in_value_and_gradient():
    """The prior's lean log-density (-z.z/2 - d/2 log 2 pi) is torch's Normal(0, 1), summed over
    the event, in value and in its gradient, at any sample shape; expand keeps it."""
    p = StandardNormalPrior(5).double()()
    ref = Independent(Normal(torch.zeros(5).double(), torch.ones(5).double()), 1)
    z = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    ours, theirs = p.log_prob(z), ref.log_prob(z)
    assert ours.shape == (7, 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)
    (g_ours,) = torch.autograd.grad(ours.sum(), z)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), z)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-13, atol=1e-13)
    wide = p.expand((3,))
    assert wide.batch_shape == (3,) and wide.event_shape == (5,)
    torch.testing.assert_close(wide.log_prob(z), theirs, rtol=1e-13, atol=1e-13)
    assert kl_divergence(Independent(Normal(z.detach(), 1.0), 1), p).abs().max() > 0


@pytest.mark.parametrize("prior_batch", [(), (4,)])
def test_kl_to_the_standard_normal_prior_is_torchs_in_value_and_gradient(prior_batch, monkeypatch):
    """The registered closed form KL(N(mu, diag sigma^2) || N(0, I)) = sum (sigma^2 + mu^2 - 1)/2
    - log sigma is torch's Normal-Normal KL summed over the event, in value and gradient (to mu
    and to log sigma), both through ``kl_divergence`` and ``kl_to_prior``, and it is the closed
    form that ran; a q that is not a diagonal Gaussian still goes to torch's formula."""
    import dgm.distributions.standard_normal as prior_module

    torch.manual_seed(0)
    loc = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    log_scale = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    q = Independent(Normal(loc, log_scale.exp()), 1)
    p = StandardNormalPrior(6).double()().expand(torch.Size(prior_batch))
    ref_p = Independent(Normal(torch.zeros(6).double(), torch.ones(6).double()), 1)
    theirs = kl_divergence(q, ref_p)  # torch's own path: (Independent, Independent)
    g_theirs = torch.autograd.grad(theirs.sum(), [loc, log_scale], retain_graph=True)
    fallback = prior_module._kl_independent_independent
    with monkeypatch.context() as m:  # the closed form must not fall back here
        m.setattr(prior_module, "_kl_independent_independent", None)
        for ours in (kl_divergence(q, p), kl_to_prior(q, p)):
            assert ours.shape == (4,) and ours.dtype == torch.float64
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
            g_ours = torch.autograd.grad(ours.sum(), [loc, log_scale], retain_graph=True)
            for a, b in zip(g_ours, g_theirs, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert prior_module._kl_independent_independent is fallback
    laplace = Independent(Laplace(loc, log_scale.exp()), 1)  # not a Gaussian: torch's formula
    torch.testing.assert_close(
        kl_divergence(laplace, p), kl_divergence(laplace, ref_p), rtol=1e-12, atol=1e-12
    )


def test_the_elementwise_normal_kl_is_torchs_in_value_gradient_and_dtype():
    """``normal_kl`` (free bits' per-unit KL, called without torch's type dispatch) is torch's
    Normal-Normal KL elementwise, in float64 value and gradient to all four parameters, with
    broadcasting, and computes in float32 for a bfloat16 q under autocast, as torch does."""
    torch.manual_seed(1)
    params = [
        torch.randn(shape, dtype=torch.float64, requires_grad=True)
        for shape in ((5, 3), (5, 3), (3,), (3,))
    ]
    q_loc, q_log_scale, p_loc, p_log_scale = params
    q, p = Normal(q_loc, q_log_scale.exp()), Normal(p_loc, p_log_scale.exp())
    ours, theirs = normal_kl(q, p), kl_divergence(q, p)
    assert ours.shape == (5, 3) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    w = torch.randn(5, 3, dtype=torch.float64)  # a generic direction, not only the sum
    g_ours = torch.autograd.grad((w * ours).sum(), params, retain_graph=True)
    g_theirs = torch.autograd.grad((w * theirs).sum(), params)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    q16 = Normal(q_loc.detach().bfloat16(), q_log_scale.detach().exp().bfloat16())
    p32 = Normal(torch.zeros(3), torch.ones(3))
    with torch.autocast("cpu", torch.bfloat16):
        ours, theirs = normal_kl(q16, p32), kl_divergence(q16, p32)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_kl_to_the_prior_keeps_torchs_dtype_under_autocast():
    """train.precision = "bfloat16" gives a bfloat16 q; torch's formula, mixing it with the
    float32 prior, computes in float32, and so does the closed form, autocast or not."""
    torch.manual_seed(0)
    loc, scale = torch.randn(100, 50).bfloat16(), (0.3 * torch.randn(100, 50)).exp().bfloat16()
    q = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
    p = StandardNormalPrior(50)()
    ref_p = Independent(Normal(torch.zeros(50), torch.ones(50)), 1)
    for enabled in (False, True):
        with torch.autocast("cpu", torch.bfloat16, enabled=enabled):
            ours, theirs = kl_to_prior(q, p), kl_divergence(q, ref_p)
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
