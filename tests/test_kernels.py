"""Each fast kernel of dgm.kernels is its readable definition: float64 to 1e-12, float32 to the
rounding error bounded from the magnitudes of the terms (u = 2^-24, gamma_n = n u / (1 - n u),
the classical bound on a sum of n rounded terms, Higham 2002, section 3.1)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent

from dgm import kernels
from dgm.models.likelihoods import IndependentBernoulli
from dgm.nn import MLP, Tanh

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53


def gamma(n: int, u: float = U32) -> float:
    return n * u / (1 - n * u)


def plain(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The definition, elementwise then summed: sum_d x_d h_d - softplus(h_d), with
    softplus(h) = log(1 + e^h) to rounding (torch's F.softplus returns h itself above h = 20)."""
    return (x * h - torch.logaddexp(torch.zeros_like(h), h)).sum(-1)


def threshold_error(h: torch.Tensor) -> torch.Tensor:
    """What F.softplus's threshold leaves out of sum_d softplus(h_d): log(1 + e^-h) <= log(1 +
    e^-20) for every h_d > 20, (...,)."""
    return (h > 20).sum(-1) * math.log1p(math.exp(-20))


def assert_close64(ours: torch.Tensor, h: torch.Tensor, x: torch.Tensor, extra=0.0) -> None:
    """ours is plain(h, x) to 1e-12 of the terms' size (float64: well above its rounding),
    beyond an ``extra`` allowance."""
    size = (x * h).abs().sum(-1) + F.softplus(h).sum(-1)
    assert ours.shape == size.shape
    err = (ours - plain(h, x)).abs()
    assert (err <= 1e-12 * (size + 1) + extra).all(), (err / (size + 1)).max()


def logits_and_data(shape, d, seed, dtype=torch.float64, binary=True):
    """Logits from 0 (every factor 1/2: the smallest products) to +-100, data in {0,1} or [0,1]."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.0, 1.0, 8.0, 100.0], dtype=dtype).repeat_interleave(
        -(-shape[-1] // 4)
    )[: shape[-1]]
    h = scales[:, None] * torch.randn(*shape, d, generator=g, dtype=dtype)  # (..., B, D)
    x = torch.rand(shape[-1], d, generator=g, dtype=dtype)  # (B, D)
    return h, (x < 0.3).to(dtype) if binary else x


# --- the Bernoulli log-mass ---------------------------------------------------------------------


def test_the_softplus_form_is_torchs_bernoulli():
    h, x = logits_and_data((3, 40), 37, seed=0, binary=False)
    ours = kernels.bernoulli_log_mass_softplus(h, x)
    ref = Independent(Bernoulli(logits=h, validate_args=False), 1).log_prob(x)
    size = (x * h).abs().sum(-1) + F.softplus(h).sum(-1)
    assert ((ours - ref).abs() <= 1e-12 * (size + 1) + threshold_error(h)).all()
    assert_close64(ours, h, x, extra=threshold_error(h))
    assert_close64(ref, h, x)  # the reference of these tests is torch's Bernoulli


def test_broadcasts_to_is_torchs_broadcast_rule():
    """The backward's shape check agrees with torch.broadcast_shapes on every pair."""
    shapes = [(), (1,), (3,), (2, 3), (1, 3), (2, 1), (4, 2, 3), (4, 1, 1), (1, 2, 3), (5,)]
    for a in shapes:
        for b in shapes:
            try:
                expected = torch.broadcast_shapes(b, a) == torch.Size(b)
            except RuntimeError:
                expected = False
            assert kernels.broadcasts_to(torch.Size(a), torch.Size(b)) == expected, (a, b)


def product_form_bound(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The float32 error bound of the product form, (...,) from float64 h, x (..., D).

    (x - 1/2) . h - sum |h| / 2: gamma_{D+2} times the terms' sizes; the log of each product of
    m factors sigmoid(|h|) (each within 4u): 5 m u, so 5 D u in all, then gamma_{G+2} times the
    sizes of the G logarithms; u per the final additions.
    """
    d = h.shape[-1]
    groups = -(-d // kernels.MAX_FACTORS)
    log_sig = F.logsigmoid(h.abs()).abs().sum(-1)
    linear = ((x - 0.5).abs() * h.abs()).sum(-1) + 0.5 * h.abs().sum(-1)
    return gamma(d + 3) * linear + 5 * d * U32 + gamma(groups + 3) * log_sig


def softplus_form_bound(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The float32 error bound of the softplus form: each softplus within 4u, sums gamma_{D+1}."""
    d = h.shape[-1]
    sp = F.softplus(h)
    rounding = gamma(d + 2) * ((x * h).abs().sum(-1) + sp.sum(-1)) + 4 * U32 * sp.sum(-1)
    return rounding + threshold_error(h)


@pytest.mark.parametrize("d", [1, 2, 37, 111, 112, 113, 224, 784, 3072])
@pytest.mark.parametrize("binary", [True, False])
def test_the_product_form_is_the_softplus_form(d, binary):
    """For any D (below, at and above a multiple of MAX_FACTORS) and logits from 0 to +-100:
    float64 to 1e-12 of the terms' size, float32 within its rounding bound of the float64 value."""
    h, x = logits_and_data((2, 40), d, seed=d, binary=binary)  # h (2, 40, D), x (40, D)
    ref = plain(h, x)  # (2, 40)
    assert_close64(kernels.bernoulli_log_mass_product(h, x), h, x)
    ours32 = kernels.bernoulli_log_mass_product(h.float(), x.float())
    assert ours32.dtype == torch.float32 and torch.isfinite(ours32).all()
    err = (ours32.double() - ref).abs()
    assert (err <= product_form_bound(h, x)).all(), (err / product_form_bound(h, x)).max()
    # logits 0: every factor is 1/2, the products 2^-112 (normal in float32), the mass 2^-D
    torch.testing.assert_close(
        ours32[:, :10].double(), torch.full((2, 10), -d * math.log(2), dtype=torch.float64)
    )


@pytest.mark.parametrize(("k", "b", "d"), [(44, 40, 37), (45, 40, 37), (15, 64, 64), (16, 64, 64)])
def test_the_evaluation_log_mass_takes_the_product_form_from_the_threshold_on(k, b, d):
    """bernoulli_log_mass: the softplus form below PRODUCT_FORM_MIN elements, the product form
    from exactly there on (16 x 64 x 64 = 2^16); the same value either side (float64 to 1e-12,
    float32 to rounding)."""
    h, x = logits_and_data((k, b), d, seed=k)  # h (K, B, D), x (B, D)
    large = h.numel() >= kernels.PRODUCT_FORM_MIN
    assert large == (k in (45, 16))
    form = kernels.bernoulli_log_mass_product if large else kernels.bernoulli_log_mass_softplus
    for dtype in (torch.float32, torch.float64):
        hh, xx = h.to(dtype), x.to(dtype)
        ours = kernels.bernoulli_log_mass(hh, xx)
        assert torch.equal(ours, form(hh, xx))
        if dtype == torch.float64:
            assert_close64(ours, h, x, extra=0.0 if large else threshold_error(h))
        else:
            bound = product_form_bound(h, x) if large else softplus_form_bound(h, x)
            assert ((ours.double() - plain(h, x)).abs() <= bound).all()


# (h shape, x shape): x (B, D) against h (K, B, D), and the other broadcasts log_prob allows
SHAPES = [
    ((3, 4, 6), (4, 6)),
    ((3, 4, 6), (3, 4, 6)),
    ((3, 4, 6), (6,)),
    ((3, 4, 6), (1, 6)),
    ((3, 4, 6), (2, 3, 4, 6)),
    ((3, 4, 6), (2, 1, 1, 6)),
    ((4, 6), (3, 4, 6)),
]


@pytest.mark.parametrize(("h_shape", "x_shape"), SHAPES)
def test_the_written_gradient_passes_gradcheck(h_shape, x_shape):
    """BernoulliLogMass's first and second derivatives against finite differences (float64):
    to both inputs (the differentiable backward) and to h only (in place where x fits in h)."""
    g = torch.Generator().manual_seed(0)
    h = (4 * torch.randn(h_shape, generator=g, dtype=torch.float64)).requires_grad_()
    x = torch.rand(x_shape, generator=g, dtype=torch.float64)
    f = kernels.BernoulliLogMass.apply
    assert torch.autograd.gradcheck(f, (h, x.requires_grad_()))
    assert torch.autograd.gradgradcheck(f, (h, x))
    assert torch.autograd.gradcheck(f, (h, x.detach()))
    assert torch.autograd.gradgradcheck(f, (h, x.detach()))


@pytest.mark.parametrize(("h_shape", "x_shape"), SHAPES)
def test_the_written_gradient_is_autograds_of_the_formula(h_shape, x_shape):
    """Value, gradients (first order: the in-place backward; create_graph: the differentiable
    one) and second derivatives equal autograd's through the plain formula: float64 to 1e-12,
    float32 within the rounding bound of (x - sigmoid(h)) g and h g summed over the broadcast.
    The inputs are left unchanged."""
    g = torch.Generator().manual_seed(1)
    h0 = 4 * torch.randn(h_shape, generator=g, dtype=torch.float64)
    x0 = torch.rand(x_shape, generator=g, dtype=torch.float64)
    out_shape = torch.broadcast_shapes(h_shape, x_shape)[:-1]
    w = torch.randn(out_shape, generator=g, dtype=torch.float64)

    h, x = h0.clone().requires_grad_(), x0.clone().requires_grad_()
    ref = plain(h, x)
    refs = torch.autograd.grad((w * ref).sum() + ref.pow(2).sum(), [h, x], create_graph=True)
    second_ref = torch.autograd.grad(refs[0].pow(2).sum(), h)[0]
    ref_first = torch.autograd.grad((w * plain(h, x)).sum(), [h, x])

    ours = kernels.BernoulliLogMass.apply(h, x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((w * ours).sum() + ours.pow(2).sum(), [h, x], create_graph=True)
    for a, b in zip(grads, refs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second = torch.autograd.grad(grads[0].pow(2).sum(), h)[0]
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=1e-12)
    for xx in (x, x.detach()):  # to both inputs, and to h only
        wrt = [h, xx] if xx.requires_grad else [h]
        first = torch.autograd.grad((w * kernels.BernoulliLogMass.apply(h, xx)).sum(), wrt)
        for a, b in zip(first, ref_first, strict=False):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.equal(h, h0) and torch.equal(x, x0)

    # float32: d/dh = (x - sigmoid(h)) w, d/dx = h w, each summed to its input's shape
    h32 = h0.float().requires_grad_()
    n = math.prod(out_shape) // max(1, math.prod(h_shape[:-1]))  # terms per h-gradient entry
    m = math.prod(out_shape) // max(1, math.prod(x_shape[:-1]))  # terms per x-gradient entry
    for x32 in (x0.float().requires_grad_(), x0.float()):
        wrt = [h32, x32] if x32.requires_grad else [h32]
        first = torch.autograd.grad(
            (w.float() * kernels.BernoulliLogMass.apply(h32, x32)).sum(), wrt
        )
        size_h = ((x0.abs() + torch.sigmoid(h0)) * w.abs()[..., None]).sum_to_size(h_shape)
        assert ((first[0].double() - ref_first[0]).abs() <= gamma(n + 6) * size_h).all()
        if len(wrt) == 2:
            size_x = (h0.abs() * w.abs()[..., None]).sum_to_size(x_shape)
            assert ((first[1].double() - ref_first[1]).abs() <= gamma(m + 2) * size_x).all()


def test_log_prob_dispatches_to_the_kernels():
    """IndependentBernoulli.log_prob: the written gradient with grad on, the evaluation log-mass
    without, bit for bit (training's and evaluation's numbers are these kernels')."""
    h, x = logits_and_data((5, 40), 784, seed=3, dtype=torch.float32)
    hg = h.clone().requires_grad_()
    w = torch.randn(5, 40)
    ours = IndependentBernoulli(hg).log_prob(x)
    assert torch.equal(ours, kernels.BernoulliLogMass.apply(h, x))
    (grad,) = torch.autograd.grad((w * ours).sum(), hg)
    hk = h.clone().requires_grad_()
    (grad_k,) = torch.autograd.grad((w * kernels.BernoulliLogMass.apply(hk, x)).sum(), hk)
    assert torch.equal(grad, grad_k)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            assert torch.equal(
                IndependentBernoulli(h).log_prob(x), kernels.bernoulli_log_mass(h, x)
            )
            small = IndependentBernoulli(h[0, :20]).log_prob(x[:20])
            assert torch.equal(small, kernels.bernoulli_log_mass_softplus(h[0, :20], x[:20]))


# --- tanh networks ------------------------------------------------------------------------------


def test_tanh_as_sigmoid_is_tanh():
    """2 sigmoid(2a) - 1 = tanh(a): within 5u of the float64 tanh in either precision (sigmoid
    within 4u of a value at most 1, doubled exactly, then one rounding), through 0 and both
    saturations."""
    a = torch.linspace(-40, 40, 400_001, dtype=torch.float64)
    assert (kernels.tanh_as_sigmoid(a) - torch.tanh(a)).abs().max() <= 5 * U64
    a32 = a.float()
    fast = kernels.tanh_as_sigmoid(a32)
    assert fast.dtype == torch.float32
    assert (fast.double() - torch.tanh(a32.double())).abs().max() <= 5 * U32
    assert torch.equal(a32, a.float())  # the input is left alone (only the result is in place)


def test_tanh_is_torchs_tanh_and_the_kernel_under_inference_mode():
    a = torch.linspace(-40, 40, 400_001)
    with torch.inference_mode():
        assert torch.equal(Tanh()(a), kernels.tanh_as_sigmoid(a))
        assert (Tanh()(a) - torch.tanh(a)).abs().max() <= 5 * U32 + U32  # two roundings apart
    with torch.no_grad():
        assert torch.equal(Tanh()(a), torch.tanh(a))
    b = a[::1000].clone().requires_grad_()
    assert torch.equal(Tanh()(b), torch.tanh(b))


def mlp_error_bound(linears, x: torch.Tensor) -> torch.Tensor:
    """A first-order bound on the float32 error of the sigmoid form, from float64 layers and x.

    Layer i's pre-activation a = W t + b (t the previous tanh output, |t| <= 1) is computed as
    (2 W') s + 2 b' with W' = 2 W, b' = b - W 1 and s in [0, 1]: gamma_{n+3} of |W||t| + |b|
    (+ 4 |W| 1 past the first layer), plus |W| times the error carried in; tanh is 1-Lipschitz
    and the sigmoid's own rounding adds 8u (4u on s, doubled in t = 2 s - 1).
    """
    e, t = torch.zeros_like(x), x
    for i, layer in enumerate(linears):
        w, b = layer.weight.double(), layer.bias.double()
        mag = F.linear(t.abs(), w.abs(), b.abs())
        if i > 0:
            mag = mag + 4 * w.abs().sum(1)
        err = F.linear(e, w.abs()) + gamma(w.shape[1] + 3) * mag
        if i == len(linears) - 1:
            return err
        e, t = err + 8 * U32, torch.tanh(F.linear(t, w, b))
    raise AssertionError("no layers")


@pytest.mark.parametrize("hidden", [[], [7], [200, 200], [300, 100, 50]])
def test_the_sigmoid_form_is_the_tanh_mlp(hidden):
    """tanh_mlp_sigmoid_form is the same function as the layers with tanh between them
    (float64: to 1e-12 of the output's size; float32: within its rounding bound of the float64
    MLP) and leaves the weights alone; under inference_mode MLP.forward is this kernel."""
    torch.manual_seed(0)
    mlp = MLP(50, hidden, 784).double()
    with torch.no_grad():
        for p in mlp.parameters():
            p.mul_(3)  # saturate some units
    linears = list(mlp)[0::2]
    x = 2 * torch.randn(13, 5, 50, dtype=torch.float64)
    with torch.no_grad():
        ref = mlp(x)  # (13, 5, 784): torch.tanh between the layers
        ours = kernels.tanh_mlp_sigmoid_form(linears, x)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12 * ref.abs().max().item())

    mlp32 = mlp.float()
    before = [p.clone() for p in mlp32.parameters()]
    with torch.inference_mode():
        fast = mlp32(x.float())
        assert torch.equal(fast, kernels.tanh_mlp_sigmoid_form(list(mlp32)[0::2], x.float()))
    assert fast.dtype == torch.float32
    bound = mlp_error_bound(list(mlp32)[0::2], x.float().double())
    assert ((fast.double() - ref).abs() <= bound).all()
    assert all(torch.equal(p, q) for p, q in zip(mlp32.parameters(), before, strict=True))


def test_only_tanh_mlps_outside_autocast_take_the_sigmoid_form():
    torch.manual_seed(0)
    relu = MLP(50, [20], 10, activation="relu")
    x = torch.randn(4, 50)
    with torch.inference_mode():
        assert torch.equal(relu(x), relu[2](relu[1](relu[0](x))))
    tanh = MLP(50, [20], 10)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        out = tanh(x)
        assert torch.equal(out, tanh[2](tanh[1](tanh[0](x))).float())
    with pytest.raises(ValueError):
        kernels.tanh_mlp_sigmoid_form([], x)
