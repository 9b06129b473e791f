"""Restricted Boltzmann machines: exact identities by enumeration, AIS against exact log Z, the
contrastive-divergence gradient against the exact one, Gibbs invariance, and the training method
(exact resume, skipped non-finite steps, learning). Float64 where sums are compared exactly;
Monte Carlo tolerances from standard errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dgm.config import Config
from dgm.methods.contrastive import ContrastiveDivergence
from dgm.models.rbm import (
    RBM,
    AISPartition,
    ais_log_partition,
    base_rate_bias,
    binary_states,
    paper_schedule,
    rbm_log_likelihood,
)
from dgm.train.checkpoint import (
    Checkpoint,
    capture_rng,
    load_checkpoint,
    load_module_state,
    restore_rng,
    save_checkpoint,
)


def random_rbm(visible: int, hidden: int, scale: float = 1.0, seed: int = 1) -> RBM:
    """An RBM in float64 with W ~ N(0, scale^2) and b, c ~ N(0, 1/4)."""
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(visible, hidden).double()
    with torch.no_grad():
        rbm.W.copy_(torch.randn(hidden, visible, generator=g, dtype=torch.float64) * scale)
        rbm.b.copy_(torch.randn(visible, generator=g, dtype=torch.float64) * 0.5)
        rbm.c.copy_(torch.randn(hidden, generator=g, dtype=torch.float64) * 0.5)
    return rbm


def exact_marginal(rbm: RBM) -> tuple[torch.Tensor, torch.Tensor]:
    """All visible states (2^V, V) and p(v) (2^V,) by enumeration."""
    v = binary_states(rbm.visible, torch.float64)
    return v, rbm.log_prob_exact(v).exp()


def exact_samples(rbm: RBM, n: int) -> torch.Tensor:
    """n exact draws from p(v): h ~ p(h) by enumerating the hidden states, then v ~ p(v | h)."""
    h_states = binary_states(rbm.hidden, rbm.W.dtype)  # (2^H, H)
    with torch.no_grad():
        p_h = torch.softmax(-rbm.hidden_free_energy(h_states), 0)  # (2^H,)
        h = h_states[torch.multinomial(p_h, n, replacement=True)]  # (n, H)
        return rbm.visible_given(h).sample()  # (n, V)


def gibbs_kernel(rbm: RBM) -> torch.Tensor:
    """T[v, v'] = sum_h p(h | v) p(v' | h) (2^V, 2^V): one block Gibbs sweep, exactly."""
    v = binary_states(rbm.visible, torch.float64)
    h = binary_states(rbm.hidden, torch.float64)
    with torch.no_grad():
        p_h_v = rbm.hidden_given(v.unsqueeze(1)).log_prob(h).exp()  # (2^V, 2^H)
        p_v_h = rbm.visible_given(h.unsqueeze(1)).log_prob(v).exp()  # (2^H, 2^V)
    return p_h_v @ p_v_h


def free_energy_gradients(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """dF/dtheta per example, flattened (N, H V + V + H), theta = (W, b, c): dF/dW = -s v^T,
    dF/db = -v, dF/dc = -s with s = sigmoid(c + W v)."""
    with torch.no_grad():
        s = torch.sigmoid(rbm.hidden_logits(v))  # (N, H)
        d_w = -(s.unsqueeze(-1) * v.unsqueeze(1)).flatten(1)  # (N, H V)
        return torch.cat([d_w, -v, -s], 1)


# -- (1) exact identities --------------------------------------------------------------------------
def test_free_energy_is_minus_log_sum_over_hidden_states():
    rbm = random_rbm(12, 8)
    v = binary_states(12, torch.float64)[::7]  # (586, 12)
    h = binary_states(8, torch.float64)  # (256, 8)
    with torch.no_grad():
        neg_e = -rbm.energy(v.unsqueeze(1), h)  # (586, 256)
        torch.testing.assert_close(
            rbm.free_energy(v), -torch.logsumexp(neg_e, 1), rtol=0, atol=1e-10
        )
        # F_h is the same sum over the visible states
        v_all = binary_states(12, torch.float64)
        neg_e = -rbm.energy(v_all, h.unsqueeze(1))  # (256, 4096)
        torch.testing.assert_close(
            rbm.hidden_free_energy(h), -torch.logsumexp(neg_e, 1), rtol=0, atol=1e-10
        )
        # the conditionals are the normalized slices of exp(-E)
        log_p_h = rbm.hidden_given(v.unsqueeze(1)).log_prob(h)  # (586, 256)
        expected = -rbm.energy(v.unsqueeze(1), h) + rbm.free_energy(v).unsqueeze(1)
        torch.testing.assert_close(log_p_h, expected, rtol=0, atol=1e-10)
        log_p_v = rbm.visible_given(h.unsqueeze(1)).log_prob(v_all)  # (256, 4096)
        expected = -rbm.energy(v_all, h.unsqueeze(1)) + rbm.hidden_free_energy(h).unsqueeze(1)
        torch.testing.assert_close(log_p_v, expected, rtol=0, atol=1e-10)


def test_exact_log_partition_by_either_layer_and_by_the_joint_sum():
    rbm = random_rbm(12, 8)
    over_h, over_v = rbm.exact_log_partition("hidden"), rbm.exact_log_partition("visible")
    torch.testing.assert_close(over_h, over_v, rtol=0, atol=1e-10)
    small = random_rbm(6, 5, seed=3)
    v, h = binary_states(6, torch.float64), binary_states(5, torch.float64)
    with torch.no_grad():
        joint = torch.logsumexp(-small.energy(v.unsqueeze(1), h).flatten(), 0)
    torch.testing.assert_close(small.exact_log_partition(), joint, rtol=0, atol=1e-10)
    _, p = exact_marginal(rbm)
    assert abs(p.sum().item() - 1) < 1e-12


def test_pseudo_log_likelihood_is_the_sum_of_exact_conditionals():
    rbm = random_rbm(10, 6)
    v = exact_samples(rbm, 20)
    expected = torch.zeros(20, dtype=torch.float64)
    for i in range(10):
        flipped = v.clone()
        flipped[:, i] = 1 - flipped[:, i]
        log_p, log_p_flip = rbm.log_prob_exact(v), rbm.log_prob_exact(flipped)
        expected += log_p - torch.logaddexp(log_p, log_p_flip)
    with torch.no_grad():
        torch.testing.assert_close(rbm.pseudo_log_likelihood(v, chunk=7), expected)


def test_base_rate_rbm_is_independent_bernoullis_with_its_log_partition():
    x = torch.bernoulli(torch.rand(300, 7).round() * 0.6 + 0.2)
    rbm = RBM.base_rate(x, hidden=5).double()
    p = (x.sum(0) + 1) / (x.shape[0] + 2)  # the smoothed pixel means
    torch.testing.assert_close(torch.sigmoid(rbm.b).float(), p.float())
    log_z = torch.nn.functional.softplus(rbm.b).sum() + 5 * math.log(2)
    torch.testing.assert_close(rbm.exact_log_partition(), log_z.detach(), rtol=0, atol=1e-10)
    assert torch.isfinite(base_rate_bias(torch.zeros(4, 3))).all()  # a pixel never on


# -- (2) AIS ---------------------------------------------------------------------------------------
def test_paper_schedule():
    betas = paper_schedule()
    assert betas.numel() == 14_501 and betas[0] == 0 and betas[-1] == 1
    steps = betas.diff()
    for lo, hi, step in ((0.0, 0.5, 1e-3), (0.5, 0.9, 1e-4), (0.9, 1.0, 1e-5)):
        inside = (betas[1:] > lo) & (betas[1:] <= hi)
        torch.testing.assert_close(steps[inside], torch.full_like(steps[inside], step))
    assert paper_schedule(145).numel() == 146 and bool((paper_schedule(145).diff() > 0).all())


def test_ais_is_exact_when_the_target_is_the_base_rate_rbm():
    x = torch.bernoulli(torch.full((200, 9), 0.3))
    rbm = RBM.base_rate(x, hidden=4).double()
    result = ais_log_partition(rbm, 20, runs=10, base_visible_bias=rbm.b.detach())
    assert torch.allclose(result.log_w, result.log_w[0])  # every weight Z_B / Z_0 = 1
    assert abs(result.log_z - rbm.exact_log_partition().item()) < 1e-10


@pytest.fixture(scope="module")
def mnist_sized_rbm() -> tuple[RBM, torch.Tensor, float]:
    """784 visible, 12 hidden units (float32, as trained), its base-rate biases from exact
    samples of it, and its exact log Z by enumerating the 4096 hidden states."""
    torch.manual_seed(5)
    rbm = RBM(784, 12, weight_std=0.1)
    with torch.no_grad():
        rbm.b.normal_(0, 1)
        rbm.c.normal_(0, 1)
    base = base_rate_bias(exact_samples(rbm, 2000))
    return rbm, base, rbm.exact_log_partition("hidden").item()


def test_ais_matches_the_exact_log_partition_of_a_784_visible_rbm(mnist_sized_rbm):
    rbm, base, exact = mnist_sized_rbm
    g = torch.Generator().manual_seed(0)
    result = ais_log_partition(rbm, 1000, runs=100, base_visible_bias=base, generator=g)
    assert isinstance(result, AISPartition) and result.runs == 100
    assert abs(result.log_z - exact) < 4 * result.stderr + 1e-3
    low, high = result.interval(3.0)
    assert low <= result.log_z <= high
    # ln p(x) = -F(x) - log Z for any x, here with the exact log Z
    x = exact_samples(rbm, 5)
    torch.testing.assert_close(rbm_log_likelihood(rbm, x, exact), rbm.log_prob_exact(x))


def test_ais_matches_the_exact_log_partition_of_a_small_rbm():
    rbm = random_rbm(12, 8)
    exact = rbm.exact_log_partition().item()
    g = torch.Generator().manual_seed(1)
    result = ais_log_partition(rbm, 500, runs=200, generator=g)  # from the uniform base
    assert abs(result.log_z - exact) < 4 * result.stderr + 1e-3


def test_ais_variance_shrinks_with_more_temperatures(mnist_sized_rbm):
    rbm, base, exact = mnist_sized_rbm
    variances, errors = [], []
    for n in (20, 400):
        g = torch.Generator().manual_seed(2)
        result = ais_log_partition(rbm, n, runs=100, base_visible_bias=base, generator=g)
        variances.append(result.log_w.var().item())
        errors.append(result.stderr)
    assert abs(result.log_z - exact) < 4 * result.stderr + 1e-3
    # Var(log w) falls about as 1/K (Neal 2001): 20 times here, checked for a factor of 4
    # (a variance from 100 heavy-tailed log-weights is uncertain by tens of percent)
    assert variances[1] < variances[0] / 4 and errors[1] < errors[0]


# -- (3) the contrastive-divergence gradient ------------------------------------------------------
def cd_setup() -> tuple[RBM, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An 8 x 4 RBM, data: 16 patterns (each 250 times, B = 4000), the data distribution q0
    over the 256 states, and the kernel of one Gibbs sweep."""
    rbm = random_rbm(8, 4, scale=1.0, seed=7)
    g = torch.Generator().manual_seed(8)
    patterns = torch.bernoulli(torch.full((16, 8), 0.3, dtype=torch.float64), generator=g)
    x = patterns.repeat(250, 1)  # (4000, 8)
    codes = (patterns * 2 ** torch.arange(8, dtype=torch.float64)).sum(1).long()
    q0 = torch.bincount(codes, minlength=256).double() / 16  # (256,)
    return rbm, x, q0, gibbs_kernel(rbm)


def mc_gradient(method: ContrastiveDivergence, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The loss's gradient from one negative phase, flattened (W, b, c), and its Monte Carlo
    standard error from the per-chain dF/dtheta."""
    rbm = method.rbm
    v_model = method.negative_phase(x)
    loss, _ = method.loss(x, v_model)
    rbm.zero_grad()
    loss.backward()
    grad = torch.cat([rbm.W.grad.flatten(), rbm.b.grad, rbm.c.grad])
    g_model = free_energy_gradients(rbm, v_model)  # (M, P)
    expected = free_energy_gradients(rbm, x).mean(0) - g_model.mean(0)
    torch.testing.assert_close(grad, expected)  # autograd: E_data dF - E_samples dF
    return grad, g_model.std(0) / math.sqrt(g_model.shape[0])


def exact_gradient(rbm: RBM, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """E_data[dF/dtheta] - E_q[dF/dtheta] with q over all visible states, exactly."""
    v = binary_states(rbm.visible, torch.float64)
    return free_energy_gradients(rbm, x).mean(0) - q @ free_energy_gradients(rbm, v)


@pytest.mark.parametrize("persistent", [False, True])
def test_long_chains_give_the_exact_log_likelihood_gradient(persistent):
    rbm, x, q0, kernel = cd_setup()
    v, p = exact_marginal(rbm)
    method = ContrastiveDivergence(rbm, k=100, persistent=persistent, chains=4000)
    # the chains' law after 100 sweeps, from the data (CD) or the chains' start (PCD), is p
    chains_start = torch.distributions.Bernoulli(logits=rbm.b.detach())  # PCD's first chains
    start = chains_start.log_prob(v).sum(-1).exp() if persistent else q0  # (256,)
    assert (start @ torch.linalg.matrix_power(kernel, 100) - p).abs().sum() < 1e-9
    grad, se = mc_gradient(method, x)
    ml = exact_gradient(rbm, x, p)  # minus the exact gradient of the mean log-likelihood
    z = (grad - ml) / se
    assert z.abs().max() < 4.5, z.abs().max()  # 44 coordinates: P(max |z| > 4.5) ~ 3e-4


def test_cd1_is_unbiased_for_its_own_expectation_and_biased_for_the_likelihood():
    rbm, x, q0, kernel = cd_setup()
    _, p = exact_marginal(rbm)
    grad, se = mc_gradient(ContrastiveDivergence(rbm, k=1), x)
    cd1 = exact_gradient(rbm, x, q0 @ kernel)  # one sweep from the data, exactly
    assert ((grad - cd1) / se).abs().max() < 4.5
    ml = exact_gradient(rbm, x, p)
    assert ((cd1 - ml) / se).abs().max() > 20  # the bias is many standard errors


# -- (4) Gibbs sampling ----------------------------------------------------------------------------
def chi_square_threshold(p: torch.Tensor, n: int, n_sd: float = 5.0) -> float:
    """Mean + n_sd sd of Pearson's X^2 for multinomial counts: E = K - 1 and
    Var = 2 (K - 1) + (sum_i 1/p_i - K^2 - 2K + 2) / n."""
    k = p.numel()
    var = 2 * (k - 1) + ((1 / p).sum().item() - k**2 - 2 * k + 2) / n
    return k - 1 + n_sd * math.sqrt(var)


def chi_square(v: torch.Tensor, p: torch.Tensor) -> float:
    codes = (v * 2 ** torch.arange(v.shape[1], dtype=v.dtype)).sum(1).long()
    counts = torch.bincount(codes, minlength=p.numel()).double()
    expected = p * v.shape[0]
    return ((counts - expected) ** 2 / expected).sum().item()


def test_gibbs_leaves_the_exact_marginal_invariant_and_converges_to_it():
    rbm = random_rbm(8, 4, scale=0.8, seed=11)
    _, p = exact_marginal(rbm)
    kernel = gibbs_kernel(rbm)
    torch.testing.assert_close(p @ kernel, p, rtol=0, atol=1e-14)  # exactly invariant
    n = 20_000
    threshold = chi_square_threshold(p, n)
    v = rbm.gibbs(exact_samples(rbm, n), steps=3)
    assert chi_square(v, p) < threshold
    # from the all-zeros state: far after one sweep, at p after 30; TV never increases
    zeros = torch.zeros(n, 8, dtype=torch.float64)
    assert chi_square(rbm.gibbs(zeros, steps=1), p) > 10 * threshold
    assert chi_square(rbm.gibbs(zeros, steps=30), p) < threshold
    q = torch.zeros(256, dtype=torch.float64)
    q[0] = 1
    tv = []
    for _ in range(30):
        q = q @ kernel
        tv.append(0.5 * (q - p).abs().sum().item())
    assert all(b <= a + 1e-15 for a, b in zip(tv, tv[1:], strict=False)) and tv[-1] < 1e-6


def test_gibbs_with_a_generator_is_reproducible_and_leaves_the_global_rng_alone():
    rbm = random_rbm(8, 4)
    v0 = torch.zeros(5, 8, dtype=torch.float64)
    state = torch.get_rng_state()
    a = rbm.gibbs(v0, 4, generator=torch.Generator().manual_seed(3))
    b = rbm.gibbs(v0, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


# -- (5)-(7) the training method -------------------------------------------------------------------
def run_steps(method: ContrastiveDivergence, x: torch.Tensor, steps: range) -> None:
    for step in steps:
        batch = x[(step * 10) % x.shape[0] :][:10]
        (outcome,) = method.step(batch, torch.arange(10), step)
        assert outcome.metrics is not None


def test_persistent_cd_resumes_bit_for_bit(tmp_path):
    x = torch.bernoulli(torch.full((50, 12), 0.4))

    def fresh(seed: int) -> ContrastiveDivergence:
        torch.manual_seed(seed)
        rbm = RBM(12, 6, weight_std=0.1)
        return ContrastiveDivergence(
            rbm, k=2, persistent=True, chains=10, lr=0.1, momentum_switch_step=2
        )

    whole = fresh(0)
    run_steps(whole, x, range(6))

    first = fresh(0)
    run_steps(first, x, range(3))
    assert set(first.checkpoint_modules()) == {"rbm", "chains"}
    assert set(first.optimizer_state()) == {"rbm"}
    data_rng = torch.Generator()
    ckpt = Checkpoint(
        epoch=1,
        step=3,
        config=Config().to_dict(),
        modules=first.checkpoint_modules(),
        optimizer=first.optimizer_state(),
        rng=capture_rng(data_rng),
        extra={},
    )
    saved = load_checkpoint(save_checkpoint(tmp_path, ckpt))  # safetensors and JSON

    resumed = fresh(1)  # other weights, chains and RNG state until restored
    for module, state in resumed.restorable(saved.modules):
        load_module_state(module, state, tmp_path)
    resumed.load_optimizer_state(saved.optimizer)
    restore_rng(saved.rng, data_rng)
    run_steps(resumed, x, range(3, 6))
    for key, value in whole.checkpoint_modules().items():
        for name, tensor in value.items():
            assert torch.equal(tensor, resumed.checkpoint_modules()[key][name]), (key, name)
    with pytest.raises(ValueError):
        resumed.load_optimizer_state({"global": saved.optimizer["rbm"]})


@pytest.mark.parametrize("fault", ["loss", "gradient"])
@pytest.mark.parametrize("persistent", [False, True])
def test_a_non_finite_loss_or_gradient_skips_the_update(persistent, fault):
    method = ContrastiveDivergence(RBM(6, 3, weight_std=0.1), k=1, persistent=persistent, chains=4)
    x = torch.bernoulli(torch.full((8, 6), 0.5))
    run_steps(method, x.repeat(2, 1), range(2))  # momentum buffers exist
    before = copy.deepcopy((method.checkpoint_modules(), method.optimizer_state()))
    bad = x.clone()
    if fault == "loss":
        bad[3, 2] = float("nan")  # F(x) is NaN
    else:  # a finite loss whose gradient in W is not
        method.rbm.W.register_hook(lambda grad: grad * float("inf"))
    (outcome,) = method.step(bad, torch.arange(8), 2)
    assert outcome.metrics is None and outcome.fault == fault
    after = (method.checkpoint_modules(), method.optimizer_state())
    for key in ("rbm", "chains"):
        for name, tensor in before[0][key].items():
            assert torch.equal(tensor, after[0][key][name])
    for i, state in before[1]["rbm"]["state"].items():
        assert torch.equal(state["momentum_buffer"], after[1]["rbm"]["state"][i]["momentum_buffer"])
    assert all(p.grad is None for p in method.rbm.parameters())


def test_step_metrics_and_evaluation():
    method = ContrastiveDivergence(RBM(6, 3, weight_std=0.1), k=1)
    x = torch.bernoulli(torch.full((8, 6), 0.5))
    rbm_before = copy.deepcopy(method.rbm)
    (outcome,) = method.step(x, torch.arange(8), 0)
    assert set(outcome.metrics) == set(method.metric_names)
    assert all(m.shape == (8,) for m in outcome.metrics.values())
    with torch.no_grad():  # the gap's mean is the loss, F(x).mean() - F(v_model).mean()
        gap = outcome.metrics["free_energy_gap"] - rbm_before.free_energy(x)  # -mean F(v_model)
    assert torch.allclose(gap, gap[0].expand(8))
    torch.testing.assert_close(outcome.metrics["reconstruction"], rbm_before.reconstruction(x))
    state = torch.get_rng_state()
    scores = method.evaluate(x)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        assert math.isclose(scores["test_free_energy"], method.rbm.free_energy(x).mean().item())
        expected = method.rbm.reconstruction(x).mean().item()
    assert math.isclose(scores["test_reconstruction"], expected, rel_tol=1e-6)


def test_pcd_increases_the_exact_training_log_likelihood():
    # the teacher: two hidden units, each switching a block of four pixels on together, so the
    # pixels are strongly correlated and the base rate (independent pixels) is 2 nats worse
    teacher = RBM(8, 2).double()
    with torch.no_grad():
        teacher.W.zero_()
        teacher.W[0, :4], teacher.W[1, 4:] = 5.0, 5.0
        teacher.b.fill_(-2.5)
        teacher.c.fill_(-10.0)  # p(h_j = 1) close to 1/2
    x = exact_samples(teacher, 1000)
    student = RBM.base_rate(x, hidden=4).double()
    with torch.no_grad():
        student.W.normal_(0, 0.1)

    def mean_log_lik(rbm: RBM) -> float:
        return rbm.log_prob_exact(x).mean().item()

    base_rate, best = mean_log_lik(student), mean_log_lik(teacher)
    assert best > base_rate + 1.5
    method = ContrastiveDivergence(student, k=1, persistent=True, chains=100, lr=0.1, momentum=0.5)
    for step in range(1000):
        batch = x[(step * 50) % 1000 :][:50]
        (outcome,) = method.step(batch, torch.arange(50), step)
        assert outcome.metrics is not None
    learned = mean_log_lik(student)
    assert learned > base_rate + 1.0 and learned > best - 0.5, (base_rate, learned, best)
