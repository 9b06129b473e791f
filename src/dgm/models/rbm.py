r"""The restricted Boltzmann machine with binary visible and hidden units (Smolensky 1986; Hinton
2002), its exact partition function when small, and its log Z by annealed importance sampling.

With weights W ``(H, V)``, visible biases b ``(V,)`` and hidden biases c ``(H,)``:

    E(v, h) = -b.v - c.h - h^T W v,
    F(v)    = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + W_j . v),
    p(v)    = exp(-F(v)) / Z,   log Z = log sum_h exp(c.h + sum_i softplus(b_i + W_{:,i} . h)),

and the conditionals factorize: p(h_j = 1 | v) = sigmoid(c_j + W_j . v), p(v_i = 1 | h) =
sigmoid(b_i + W_{:,i} . h). Z is a sum over 2^min(V, H) terms, so :meth:`RBM.exact_log_partition`
enumerates the smaller layer; otherwise :func:`ais_log_partition` estimates it.

AIS (Neal 2001) as Salakhutdinov & Murray (2008, sec. 4.1) run it for RBMs: from a base-rate RBM
A (visible biases b_A, no weights, hidden biases 0) to the RBM B through

    p*_k(v) = exp((1 - beta_k) b_A.v + beta_k b.v) prod_j (1 + exp(beta_k (c_j + W_j . v))),

0 = beta_0 < ... < beta_K = 1, so p*_0 is A's marginal (Z_0 = 2^H prod_i (1 + exp(b_A,i))) and
p*_K = exp(-F). Run m starts at v_1 ~ p_0 exactly and moves by T_k, a block Gibbs step on the joint
p_k(v, h) ∝ exp((1 - beta_k) b_A.v + beta_k (b.v + c.h + h^T W v)), whose v-marginal is p*_k:

    h ~ p(h_j = 1) = sigmoid(beta_k (c_j + W_j . v)),
    v ~ p(v_i = 1) = sigmoid((1 - beta_k) b_A,i + beta_k (b_i + W_{:,i} . h)).

The weight w = prod_{k=1}^{K} p*_k(v_k) / p*_{k-1}(v_k) has E[w] = Z_B / Z_0, hence
log Z_B ≈ log Z_0 + log (1/M) sum_m w_m: unbiased in Z, a stochastic lower bound in log Z.

Shapes: v ``(..., V)``, h ``(..., H)``; energies and log-probabilities ``(...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent
from torch.nn.functional import logsigmoid, softplus

from dgm.errors import UsageError

#: the most units a layer may have for exact enumeration (2^20 states)
MAX_ENUMERATED = 20


def binary_states(
    n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """All 2^n binary vectors ``(2^n, n)``, row r the bits of r (least significant first)."""
    r = torch.arange(2**n, device=device).unsqueeze(-1)  # (2^n, 1)
    return ((r >> torch.arange(n, device=device)) & 1).to(dtype)  # (2^n, n)


def bernoulli_draw(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A draw 1[u < sigmoid(logits)], u ~ U(0, 1), from ``generator`` (None: the global RNG);
    a NaN logit draws 0, where ``torch.bernoulli`` would raise."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    return (u < torch.sigmoid(logits)).to(logits.dtype)


def base_rate_bias(x: Tensor, pseudocount: float = 1.0) -> Tensor:
    r"""The visible biases of the base-rate RBM: b_A,i = log p_i - log(1 - p_i), the logit of the
    pixel means of ``x`` ``(N, V)`` (binary, or grey levels in [0, 1] whose means are those of
    their binarizations), smoothed as p_i = (sum_n x_ni + a) / (N + 2 a) with a = ``pseudocount``
    so that a pixel never on (or always on) keeps a finite bias (Salakhutdinov & Murray 2008).
    Returns ``(V,)`` float64."""
    x = x.double()
    p = (x.sum(0) + pseudocount) / (x.shape[0] + 2 * pseudocount)  # (V,)
    return p.log() - (-p).log1p()


class RBM(nn.Module):
    r"""A binary RBM with ``visible`` V and ``hidden`` H units: parameters ``W`` (H, V), ``b``
    (V,) and ``c`` (H,); W starts at N(0, ``weight_std``^2), the biases at 0 (Hinton 2010).

    >>> rbm = RBM(6, 3, weight_std=1.0)
    >>> round(rbm.log_prob_exact(binary_states(6)).exp().sum().item(), 9)  # p sums to one
    1.0
    """

    def __init__(self, visible: int, hidden: int, weight_std: float = 0.01) -> None:
        super().__init__()
        if visible < 1 or hidden < 1:
            raise UsageError(f"an RBM needs visible and hidden units, got {visible}, {hidden}")
        self.W = nn.Parameter(torch.randn(hidden, visible) * weight_std)
        self.b = nn.Parameter(torch.zeros(visible))
        self.c = nn.Parameter(torch.zeros(hidden))

    @classmethod
    def base_rate(cls, x: Tensor, hidden: int, pseudocount: float = 1.0) -> RBM:
        """The base-rate RBM of data ``x`` (N, V): b = :func:`base_rate_bias`, W = 0, c = 0; its
        p(v) = prod_i Bernoulli(v_i; p_i) and log Z = sum_i softplus(b_i) + H log 2."""
        rbm = cls(x.shape[1], hidden, weight_std=0.0)
        with torch.no_grad():
            rbm.b.copy_(base_rate_bias(x, pseudocount))
        return rbm

    @property
    def visible(self) -> int:
        return self.W.shape[1]

    @property
    def hidden(self) -> int:
        return self.W.shape[0]

    # -- energies ------------------------------------------------------------------------------
    def hidden_logits(self, v: Tensor) -> Tensor:
        """c + W v ``(..., H)``: the logits of p(h | v)."""
        return v @ self.W.T + self.c

    def visible_logits(self, h: Tensor) -> Tensor:
        """b + W^T h ``(..., V)``: the logits of p(v | h)."""
        return h @ self.W + self.b

    def energy(self, v: Tensor, h: Tensor) -> Tensor:
        """E(v, h) = -b.v - c.h - h^T W v ``(...)``."""
        return -(v @ self.b) - (h @ self.c) - ((h @ self.W) * v).sum(-1)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -b.v - sum_j softplus(c_j + W_j . v) ``(...)``, so p(v) = exp(-F(v)) / Z."""
        return free_energy(v, self.W, self.b, self.c)

    def unnormalized_log_prob(self, v: Tensor) -> Tensor:
        """log p(v) + log Z = -F(v) ``(...)``."""
        return -self.free_energy(v)

    def hidden_free_energy(self, h: Tensor) -> Tensor:
        """F_h(h) = -c.h - sum_i softplus(b_i + W_{:,i} . h) ``(...)``: p(h) = exp(-F_h(h)) / Z."""
        return free_energy(h, self.W.T, self.c, self.b)

    # -- conditionals and sampling ------------------------------------------------------------
    def hidden_given(self, v: Tensor) -> Independent:
        """p(h | v) = prod_j Bernoulli(sigmoid(c_j + W_j . v)), event shape (H,)."""
        return Independent(Bernoulli(logits=self.hidden_logits(v)), 1)

    def visible_given(self, h: Tensor) -> Independent:
        """p(v | h) = prod_i Bernoulli(sigmoid(b_i + W_{:,i} . h)), event shape (V,)."""
        return Independent(Bernoulli(logits=self.visible_logits(h)), 1)

    @torch.no_grad()
    def gibbs(self, v: Tensor, steps: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """``steps`` block Gibbs sweeps h ~ p(h | v), v ~ p(v | h) from ``v`` ``(..., V)``; each
        leaves p(v) invariant. Draws from ``generator``, or the global RNG when None."""
        for _ in range(steps):
            h = bernoulli_draw(self.hidden_logits(v), generator)
            v = bernoulli_draw(self.visible_logits(h), generator)
        return v

    @torch.no_grad()
    def generate(self, n: int, mean: bool = True, steps: int = 1000) -> Tensor:
        """``n`` images by ``steps`` Gibbs sweeps (global RNG) from independent pixels
        v ~ prod_i Bernoulli(sigmoid(b_i)): the last sweep's p(v | h) means (``mean``) or its
        draws v ``(n, V)``. More sweeps, closer to the model's p(v)."""
        if steps < 1:
            raise ValueError(f"an RBM sample needs at least one Gibbs sweep, got steps = {steps}")
        v = bernoulli_draw(self.b.detach().expand(n, -1))
        v = self.gibbs(v, steps - 1)
        h = bernoulli_draw(self.hidden_logits(v))
        probs = torch.sigmoid(self.visible_logits(h))
        return probs if mean else torch.bernoulli(probs)

    def reconstruction(self, v: Tensor) -> Tensor:
        r"""The cross-entropy -log p(v | h = E[h | v]) ``(...)``, in nats: how well the mean-field
        one-step reconstruction sigmoid(b + W^T sigmoid(c + W v)) predicts v (no draws)."""
        logits = self.visible_logits(torch.sigmoid(self.hidden_logits(v)))
        return -(v * logsigmoid(logits) + (1 - v) * logsigmoid(-logits)).sum(-1)

    def pseudo_log_likelihood(self, v: Tensor, chunk: int = 64) -> Tensor:
        r"""sum_i log p(v_i | v_{-i}) ``(B,)`` for v ``(B, V)`` (Besag 1975), exactly:
        log p(v_i | v_{-i}) = log sigmoid(F(v^(i)) - F(v)), v^(i) being v with bit i flipped, so
        flipping moves the hidden logits by s_i W_{:,i}, s_i = 1 - 2 v_i. Costs B V H."""
        parts = []
        for v_b in v.split(chunk):
            a = self.hidden_logits(v_b)  # (B, H)
            s = 1 - 2 * v_b  # (B, V): +1 turns a bit on, -1 off
            a_flip = a.unsqueeze(1) + s.unsqueeze(-1) * self.W.T  # (B, V, H)
            delta = -s * self.b - (softplus(a_flip) - softplus(a).unsqueeze(1)).sum(-1)  # (B, V)
            parts.append(logsigmoid(delta).sum(-1))  # F(v^(i)) - F(v) = delta_i
        return torch.cat(parts)

    # -- exact normalization (small layers) -----------------------------------------------------
    def exact_log_partition(self, over: str | None = None, chunk: int = 4096) -> Tensor:
        """log Z ``()`` in float64 by enumerating the 2^H hidden states (``over="hidden"``,
        log Z = logsumexp_h -F_h(h)) or the 2^V visible ones (``"visible"``, logsumexp_v -F(v));
        None picks the smaller layer. A layer of over :data:`MAX_ENUMERATED` units is refused."""
        over = over or ("hidden" if self.hidden <= self.visible else "visible")
        if over not in ("hidden", "visible"):
            raise UsageError(f"enumerate over 'hidden' or 'visible', not {over!r}")
        n = self.hidden if over == "hidden" else self.visible
        if n > MAX_ENUMERATED:
            raise UsageError(f"cannot enumerate 2^{n} {over} states (at most 2^{MAX_ENUMERATED})")
        W, b, c = (p.detach().double() for p in (self.W, self.b, self.c))
        if over == "hidden":  # F_h is F of the RBM with the layers' roles swapped
            W, b, c = W.T, c, b
        states = binary_states(n, torch.float64, W.device)  # (2^n, n)
        neg_f = torch.cat([-free_energy(s, W, b, c) for s in states.split(chunk)])  # (2^n,)
        return torch.logsumexp(neg_f, 0)

    def log_prob_exact(self, v: Tensor, log_z: Tensor | None = None) -> Tensor:
        """log p(v) = -F(v) - log Z ``(...)`` in float64, with the exact log Z (or ``log_z``)."""
        log_z = self.exact_log_partition() if log_z is None else log_z
        W, b, c = (p.detach().double() for p in (self.W, self.b, self.c))
        return -free_energy(v.double(), W, b, c) - log_z


def free_energy(v: Tensor, W: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """F(v) = -b.v - sum_j softplus(c_j + W_j . v) ``(...)`` for v ``(..., V)``, W ``(H, V)``."""
    return -(v @ b) - softplus(v @ W.T + c).sum(-1)


# -- annealed importance sampling of log Z ---------------------------------------------------------
def paper_schedule(n_temperatures: int = 14_500) -> Tensor:
    """The inverse temperatures beta_0 = 0 < ... < beta_K = 1 (float64, K = ``n_temperatures``)
    of Salakhutdinov & Murray (2008, sec. 4.1): uniform steps with 500 of every 14,500 in
    [0, 0.5], 4,000 in [0.5, 0.9] and 10,000 in [0.9, 1] (steps 1e-3, 1e-4, 1e-5 at K = 14,500),
    denser where p*_k changes fastest."""
    if n_temperatures < 3:
        raise UsageError(f"the schedule needs at least 3 temperatures, got {n_temperatures}")
    n1 = max(1, round(n_temperatures * 500 / 14_500))
    n2 = max(1, round(n_temperatures * 4_000 / 14_500))
    n3 = n_temperatures - n1 - n2
    pieces = [
        torch.linspace(0.0, 0.5, n1 + 1, dtype=torch.float64),
        torch.linspace(0.5, 0.9, n2 + 1, dtype=torch.float64)[1:],
        torch.linspace(0.9, 1.0, n3 + 1, dtype=torch.float64)[1:],
    ]
    return torch.cat(pieces)  # (K + 1,)


@dataclass
class AISPartition:
    r"""An AIS estimate of log Z from M runs.

    ``log_z`` = log Z_0 + log (1/M) sum_m w_m. ``stderr``: its standard error by the delta method,
    se(log mean w) ≈ sd(w) / (sqrt(M) mean(w)), from the weights' sample standard deviation; it
    is only as good as sd(w) is estimated, so it understates the error when the weights are
    heavy-tailed (few runs, too few temperatures). ``log_w``: the runs' log-weights ``(M,)``,
    ``log_z_base``: log Z_0, ``temperatures``: K."""

    log_z: float
    stderr: float | None
    log_w: Tensor
    log_z_base: float
    temperatures: int

    @property
    def runs(self) -> int:
        return self.log_w.numel()

    @property
    def effective_sample_size(self) -> float:
        """(sum_m w_m)^2 / sum_m w_m^2, between 1 and M."""
        return math.exp(2 * torch.logsumexp(self.log_w, 0) - torch.logsumexp(2 * self.log_w, 0))

    def interval(self, n_se: float = 3.0) -> tuple[float, float]:
        """log(Z^ -+ n_se sigma^) with sigma^ the standard error of the mean weight, as the paper
        reports log Z (its lower end -inf when the interval reaches zero)."""
        w = (self.log_w - self.log_w.max()).exp()  # (M,), scaled by exp(-max log w)
        mean, se = w.mean().item(), w.std().item() / math.sqrt(self.runs)
        shift = self.log_z - math.log(mean)
        low = math.log(mean - n_se * se) + shift if mean > n_se * se else -math.inf
        return low, math.log(mean + n_se * se) + shift

    def summary(self) -> dict[str, float | int | None]:
        return {
            "log_z": self.log_z,
            "log_z_stderr": self.stderr,
            "log_z_base": self.log_z_base,
            "runs": self.runs,
            "temperatures": self.temperatures,
            "effective_sample_size": self.effective_sample_size,
        }


def log_mean_exp_stderr(log_w: Tensor) -> tuple[float, float | None]:
    """log (1/M) sum_m exp(log_w_m) and its delta-method standard error sd(w) / (sqrt(M) mean w)
    (None when M = 1), computed on exp(log_w - max) so that nothing overflows."""
    log_w = log_w.double()
    m = log_w.numel()
    top = log_w.max()
    w = (log_w - top).exp()  # (M,)
    estimate = (w.mean().log() + top).item()
    stderr = (w.std() / (math.sqrt(m) * w.mean())).item() if m > 1 else None
    return estimate, stderr


@torch.no_grad()
def ais_log_partition(
    rbm: RBM,
    betas: Tensor | int = 14_500,
    runs: int = 100,
    base_visible_bias: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AISPartition:
    r"""log Z of ``rbm`` by AIS from the base-rate RBM with visible biases ``base_visible_bias``
    (V,) (None: zeros, the uniform distribution), as in the module docstring: ``runs`` chains
    in parallel through ``betas`` (a schedule beta_0 = 0 < ... < beta_K = 1, or K for
    :func:`paper_schedule`). Draws from ``generator`` (on the RBM's device; None: the global RNG).

    The increment log p*_k(v) - log p*_{k-1}(v) = (beta_k - beta_{k-1}) (b - b_A).v +
    sum_j [softplus(beta_k a_j) - softplus(beta_{k-1} a_j)], a = c + W v, is summed in float64;
    a is also the logit of the next hidden draw, so each temperature costs two products of
    (runs, V) by (V, H)."""
    if isinstance(betas, int):
        betas = paper_schedule(betas)
    betas = betas.double()
    if betas.ndim != 1 or betas.numel() < 2 or betas[0] != 0 or betas[-1] != 1:
        raise UsageError("an AIS schedule runs from beta = 0 to beta = 1")
    if bool((betas.diff() < 0).any()):
        raise UsageError("an AIS schedule must not decrease")
    if runs < 1:
        raise UsageError(f"AIS needs at least one run, got {runs}")
    W, b, c = rbm.W.detach(), rbm.b.detach(), rbm.c.detach()
    b_a = torch.zeros_like(b) if base_visible_bias is None else base_visible_bias.to(b)
    log_z_base = (softplus(b_a.double()).sum() + rbm.hidden * math.log(2.0)).item()
    db = (b - b_a).double()  # (V,)
    v = bernoulli_draw(b_a.expand(runs, -1), generator)  # (M, V): an exact draw from p_0
    log_w = torch.zeros(runs, dtype=torch.float64, device=W.device)
    schedule = betas.tolist()
    for k in range(1, len(schedule)):
        beta, beta_prev = schedule[k], schedule[k - 1]
        a = v @ W.T + c  # (M, H)
        a64 = a.double()
        log_w += (beta - beta_prev) * (v.double() @ db)
        log_w += (softplus(beta * a64) - softplus(beta_prev * a64)).sum(-1)
        if k < len(schedule) - 1:  # T_k: block Gibbs on p_k(v, h)
            h = bernoulli_draw(beta * a, generator)  # (M, H)
            v = bernoulli_draw((1 - beta) * b_a + beta * (h @ W + b), generator)  # (M, V)
    log_ratio, stderr = log_mean_exp_stderr(log_w)
    return AISPartition(log_z_base + log_ratio, stderr, log_w.cpu(), log_z_base, len(schedule) - 1)


@torch.no_grad()
def rbm_log_likelihood(
    rbm: RBM, x: Tensor, log_z: float | Tensor, batch_size: int = 1000
) -> Tensor:
    """ln p(x) = -F(x) - log Z per example ``(N,)``, float64, for x ``(N, V)`` and an (exact or
    AIS) ``log_z``; with an AIS estimate its error is common to every example."""
    W, b, c = (p.detach() for p in (rbm.W, rbm.b, rbm.c))
    neg_f = torch.cat([-free_energy(x_b.to(W), W, b, c).double() for x_b in x.split(batch_size)])
    return neg_f - float(log_z)
