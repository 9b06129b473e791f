r"""Diffusion models as latent-variable models (Ho et al. 2020, DDPM; Song et al. 2021, DDIM).

A fixed Gaussian chain turns the data, mapped to :math:`y_0`, into noise,

    q(y_{1:T} | y_0) = prod_t N(y_t; sqrt(alpha_t) y_{t-1}, beta_t I),   alpha_t = 1 - beta_t,

and a learned reverse chain turns noise back into data:

    p(x_0, y_{1:T}) = N(y_T; 0, I) prod_{t=2}^T p(y_{t-1} | y_t) p(x_0 | y_1).

Its evidence lower bound (Ho et al. eq. 5), per example in nats summed over pixels, is

    -ELBO = L_T + sum_{t=2}^T L_{t-1} + L_0,
    L_T     = KL(q(y_T | y_0) || N(0, I)),                          closed form
    L_{t-1} = E_q KL(q(y_{t-1} | y_t, y_0) || p(y_{t-1} | y_t)),    closed form given y_t
    L_0     = -E_q log p(x_0 | y_1).

Time steps are integers t in 1..T. Every network here predicts the noise epsilon of
y_t = sqrt(alpha_bar_t) y_0 + sqrt(1 - alpha_bar_t) epsilon (Ho et al. eq. 11): a *denoiser* is a
module with an int attribute ``dim`` whose ``forward(y, t)`` maps y ``(B, dim)`` and t ``(B,)``
(int64, in 1..T) to epsilon-hat ``(B, dim)``.

Here: noise schedules (:class:`LinearSchedule`, :class:`CosineSchedule`) and the model
(:class:`GaussianDiffusion`). Its decoders p(x_0 | y_1) are in
:mod:`dgm.models.diffusion_decoders`, its denoisers (:class:`~dgm.models.denoisers.UNet`,
:class:`~dgm.models.denoisers.MLPDenoiser`) in :mod:`dgm.models.denoisers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from dgm.distributions import StandardNormal, kl_to_prior
from dgm.models.diffusion_decoders import DECODERS, Decoder

# -- noise schedules -----------------------------------------------------------------------------


class NoiseSchedule:
    r"""The forward chain's variances beta_1..beta_T, with alpha_t = 1 - beta_t and
    alpha_bar_t = prod_{s <= t} alpha_s. Each is a float64 tensor ``(T,)``; entry ``t - 1``
    belongs to time step t."""

    def __init__(self, betas: Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty 1-d tensor with values in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)  # (T,)

    @property
    def T(self) -> int:
        """The number of diffusion steps."""
        return self.betas.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T})"


class LinearSchedule(NoiseSchedule):
    r"""beta_t linear from ``beta_1`` to ``beta_T`` (Ho et al. 2020, sec. 4: 1e-4 to 0.02)."""

    def __init__(self, T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> None:
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        super().__init__(torch.linspace(beta_1, beta_T, T, dtype=torch.float64))


class CosineSchedule(NoiseSchedule):
    r"""alpha_bar_t = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) * pi / 2), so
    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped at ``max_beta`` (Nichol and Dhariwal
    2021, eq. 17); alpha_bar is then the product of the clipped alphas."""

    def __init__(self, T: int, s: float = 0.008, max_beta: float = 0.999) -> None:
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # (T + 1,)
        alpha_bar = f / f[0]
        super().__init__((1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta))


# -- the model -----------------------------------------------------------------------------------


@dataclass
class DiffusionTerms:
    """The negative ELBO at one random time step per example (:meth:`GaussianDiffusion.elbo_terms`).

    ``t`` ``(B,)``: the drawn steps; ``prior`` ``(B,)``: L_T; ``term`` ``(B,)``: L_{t-1} at the
    drawn t (L_0 for t = 1); ``estimate`` ``(B,)``: L_T + T * term, unbiased for -ELBO;
    ``simple`` ``(B,)``: ||epsilon - epsilon-hat||^2, summed over pixels.
    """

    t: Tensor
    prior: Tensor
    term: Tensor
    estimate: Tensor
    simple: Tensor


class GaussianDiffusion(nn.Module):
    r"""The forward chain of ``schedule``, the reverse chain of ``denoiser`` and the decoder of
    ``data_kind`` (``"binary"``, ``"grey"``, ``"gaussian"``, or a :class:`Decoder`).

    The reverse chain (Ho et al. sec. 3.2, eq. 11) has fixed variances, sigma_t^2 =
    beta-tilde_t (the posterior's, eq. 7; exact when y_0 is a point) for t >= 2 and
    sigma_1^2 = beta_1 in the decoder (beta-tilde_1 = 0):

        p(y_{t-1} | y_t) = N(mu_theta, sigma_t^2 I),
        mu_theta(y_t, t) = (y_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(y_t, t)) / sqrt(alpha_t).

    At t = 1, mu_theta(y_1, 1) is the predicted y_0 and the decoder's location. ``dim``: the
    data's dimension (default ``denoiser.dim``). The schedule's arrays are float64 buffers
    indexed by t (entry 0: alpha_bar_0 = 1); coefficients are cast to the data's dtype.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        denoiser: nn.Module,
        data_kind: str | Decoder = "binary",
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(data_kind, str):
            if data_kind not in DECODERS:
                raise ValueError(f"data_kind must be one of {sorted(DECODERS)}, got {data_kind!r}")
            data_kind = DECODERS[data_kind]()
        self.schedule, self.denoiser, self.data_decoder = schedule, denoiser, data_kind
        self.T = schedule.T
        self.dim = int(dim if dim is not None else denoiser.dim)
        zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        beta = torch.cat([zero, schedule.betas])  # (T + 1,), index t
        alpha_bar = torch.cat([one, schedule.alpha_bar])  # alpha_bar_0 = 1
        beta_tilde = torch.cat([zero, (1 - alpha_bar[:-1]) / (1 - alpha_bar[1:]) * beta[1:]])
        for name, value in {
            "beta": beta,
            "alpha": 1 - beta,
            "alpha_bar": alpha_bar,
            "beta_tilde": beta_tilde,  # eq. 7; 0 at t = 0 and t = 1
        }.items():
            self.register_buffer(name, value, persistent=False)

    def _at(self, name: str, t: Tensor | int, like: Tensor) -> Tensor:
        """The buffer ``name`` at steps ``t`` ``(B,)`` as ``(B, 1)`` (or a scalar for an int t),
        in ``like``'s dtype."""
        value = getattr(self, name)[t]
        return (value.unsqueeze(-1) if value.ndim else value).to(like.dtype)

    def _check(self, t: Tensor, low: int) -> None:
        if bool(((t < low) | (t > self.T)).any()):
            raise ValueError(f"time steps must be in {low}..{self.T}")

    # -- the forward chain ---------------------------------------------------------------------
    def marginal(self, y0: Tensor, t: Tensor) -> Distribution:
        r"""q(y_t | y_0) = N(sqrt(alpha_bar_t) y_0, (1 - alpha_bar_t) I) (Ho et al. eq. 4):
        y0 ``(B, D)``, t ``(B,)``; event shape ``(D,)``."""
        alpha_bar = self._at("alpha_bar", t, y0)
        scale = (1 - alpha_bar).sqrt().expand_as(y0)
        return Independent(Normal(alpha_bar.sqrt() * y0, scale, False), 1, False)

    def q_sample(self, y0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        r"""y_t = sqrt(alpha_bar_t) y_0 + sqrt(1 - alpha_bar_t) epsilon, the draw of
        :meth:`marginal` with the given noise ``(B, D)``."""
        alpha_bar = self._at("alpha_bar", t, y0)
        return alpha_bar.sqrt() * y0 + (1 - alpha_bar).sqrt() * noise

    def posterior(self, y0: Tensor, yt: Tensor, t: Tensor) -> Distribution:
        r"""q(y_{t-1} | y_t, y_0) = N(mu-tilde, beta-tilde_t I) for t in 2..T (Ho et al. eq. 6-7):

        mu-tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) y_0
                   + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) y_t,
        beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t."""
        self._check(t, 2)
        return self._posterior(y0, yt, t)

    def _posterior(self, y0: Tensor, yt: Tensor, t: Tensor) -> Distribution:
        beta, alpha = self._at("beta", t, y0), self._at("alpha", t, y0)
        alpha_bar, alpha_bar_prev = self._at("alpha_bar", t, y0), self._at("alpha_bar", t - 1, y0)
        mean = (alpha_bar_prev.sqrt() * beta * y0 + alpha.sqrt() * (1 - alpha_bar_prev) * yt) / (
            1 - alpha_bar
        )
        scale = self._at("beta_tilde", t, y0).sqrt().expand_as(mean)
        return Independent(Normal(mean, scale, False), 1, False)

    def prior_term(self, y0: Tensor) -> Tensor:
        r"""L_T = KL(q(y_T | y_0) || N(0, I)) ``(B,)``, in closed form."""
        t = torch.full(y0.shape[:1], self.T, device=y0.device)
        p = StandardNormal(torch.zeros_like(y0), torch.ones_like(y0))
        return kl_to_prior(self.marginal(y0, t), p)

    # -- the reverse chain ---------------------------------------------------------------------
    def mean_from_eps(self, yt: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        r"""mu_theta = (y_t - beta_t / sqrt(1 - alpha_bar_t) epsilon) / sqrt(alpha_t) (eq. 11)."""
        beta, alpha = self._at("beta", t, yt), self._at("alpha", t, yt)
        return (yt - beta / (1 - self._at("alpha_bar", t, yt)).sqrt() * eps) / alpha.sqrt()

    def predict_y0(self, yt: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        r"""y_0-hat = (y_t - sqrt(1 - alpha_bar_t) epsilon) / sqrt(alpha_bar_t) (eq. 4 solved)."""
        alpha_bar = self._at("alpha_bar", t, yt)
        return (yt - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    def reverse(self, yt: Tensor, t: Tensor, eps: Tensor | None = None) -> Distribution:
        r"""p(y_{t-1} | y_t) = N(mu_theta(y_t, t), beta-tilde_t I) for t in 2..T; ``eps``: the
        denoiser's output at (y_t, t) if already computed."""
        self._check(t, 2)
        return self._reverse(yt, t, self.denoiser(yt, t) if eps is None else eps)

    def _reverse(self, yt: Tensor, t: Tensor, eps: Tensor) -> Distribution:
        mean = self.mean_from_eps(yt, t, eps)
        scale = self._at("beta_tilde", t, yt).sqrt().expand_as(mean)
        return Independent(Normal(mean, scale, False), 1, False)

    def decoder(self, y1: Tensor, eps: Tensor | None = None) -> Distribution:
        r"""p(x_0 | y_1): the decoder at mu_theta(y_1, 1) and sigma_1 = sqrt(beta_1); ``eps``:
        the denoiser's output at (y_1, 1) if already computed."""
        if eps is None:
            eps = self.denoiser(y1, torch.ones(y1.shape[0], dtype=torch.long, device=y1.device))
        return self._decoder(y1, eps)

    def _decoder(self, y1: Tensor, eps: Tensor) -> Distribution:
        return self.data_decoder(self.mean_from_eps(y1, 1, eps), self._at("beta", 1, y1).sqrt())

    # -- the bound -------------------------------------------------------------------------------
    def _terms(self, x0: Tensor, y0: Tensor, yt: Tensor, t: Tensor, eps_hat: Tensor) -> Tensor:
        """L_{t-1} at y_t for t >= 2, and -log p(x_0 | y_1 = y_t) for t = 1 ``(B,)``."""
        t2 = t.clamp(min=2)  # rows with t = 1 take the decoder's value below
        kl = kl_divergence(self._posterior(y0, yt, t2), self._reverse(yt, t2, eps_hat))
        nll = -self._decoder(yt, eps_hat).log_prob(x0)
        return torch.where(t == 1, nll, kl)

    def elbo_terms(
        self, x0: Tensor, t: Tensor | None = None, noise: Tensor | None = None
    ) -> DiffusionTerms:
        r"""-ELBO at a random step per example (Ho et al. sec. 3.4): t ~ U{1..T}, y_t ~
        q(y_t | y_0), and the estimate L_T + T L_{t-1} (T L_0 at t = 1), unbiased for the full
        sum. x0 ``(B, D)``; t and noise are drawn from the global RNG unless given (t first)."""
        y0 = self.data_decoder.to_chain(x0)
        if t is None:
            t = torch.randint(1, self.T + 1, x0.shape[:1], device=x0.device)
        else:
            self._check(t, 1)
        noise = torch.randn_like(y0) if noise is None else noise
        yt = self.q_sample(y0, t, noise)
        eps_hat = self.denoiser(yt, t)  # (B, D)
        term = self._terms(x0, y0, yt, t, eps_hat)
        prior = self.prior_term(y0)
        simple = (noise - eps_hat).square().sum(-1)
        return DiffusionTerms(t, prior, term, prior + self.T * term, simple)

    def simple_loss(self, x0: Tensor) -> Tensor:
        r"""L_simple = ||epsilon - epsilon_theta(y_t, t)||^2 ``(B,)`` at t ~ U{1..T} (Ho et al.
        eq. 14; summed over pixels, where the paper averages)."""
        return self.elbo_terms(x0).simple

    def all_terms(
        self, x0: Tensor, batch_size: int = 4096, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Every term of -ELBO ``(B, T + 1)``: column 0 is L_0, column j is L_j (j = 1..T-1),
        column T is L_T; one y_t ~ q(y_t | y_0) per example and step, drawn from ``generator``
        (default: the global RNG). At most ``batch_size`` rows go through the denoiser at once."""
        y0 = self.data_decoder.to_chain(x0)  # (B, D)
        n = x0.shape[0]
        columns = []
        chunk = max(1, batch_size // max(n, 1))
        for start in range(1, self.T + 1, chunk):
            ts = torch.arange(start, min(start + chunk, self.T + 1), device=x0.device)  # (c,)
            t = ts.repeat_interleave(n)  # (c * B,)
            x0_c, y0_c = x0.repeat(len(ts), 1), y0.repeat(len(ts), 1)  # (c * B, D)
            noise = torch.randn(y0_c.shape, generator=generator, dtype=y0.dtype, device=y0.device)
            yt = self.q_sample(y0_c, t, noise)
            term = self._terms(x0_c, y0_c, yt, t, self.denoiser(yt, t))  # (c * B,)
            columns.append(term.view(len(ts), n).T)  # (B, c)
        columns.append(self.prior_term(y0).unsqueeze(-1))  # (B, 1)
        return torch.cat(columns, -1)  # (B, T + 1)

    def elbo(
        self, x0: Tensor, batch_size: int = 4096, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""The bound ``(B,)`` on log p(x_0), in nats: -(L_0 + ... + L_T), every step summed
        (:meth:`all_terms`)."""
        return -self.all_terms(x0, batch_size, generator).sum(-1)

    def elbo_estimate(
        self,
        x0: Tensor,
        k: int,
        batch_size: int = 4096,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""An unbiased estimate ``(B,)`` of :meth:`elbo` from ``k`` time steps per example: the
        decoder's L_0 (t = 1) always, and one step in each of k - 1 strata of 2..T (stratum j:
        the steps from 2 + floor(j(T-1)/(k-1)) on, weighted by its size n_j):
        -(L_T + L_0 + sum_j n_j L_{t_j - 1}). L_0 dominates the variance on binary data, so it
        is never sampled. At k = T every step is its own stratum and the estimate is
        :meth:`elbo`'s sum itself. Draws (t, then y_t) from ``generator`` (default: global RNG)."""
        if not 2 <= k <= self.T:
            raise ValueError(f"k must be in 2..{self.T} time steps, got {k}")
        y0 = self.data_decoder.to_chain(x0)  # (B, D)
        n, dev = x0.shape[0], x0.device
        m = self.T - 1  # the steps 2..T, split into k - 1 strata
        edges = [j * m // (k - 1) for j in range(k)]
        low = torch.tensor(edges[:-1], device=dev) + 2  # (k - 1,)
        size = torch.tensor([b - a for a, b in zip(edges, edges[1:], strict=False)], device=dev)
        u = torch.rand(n, k - 1, generator=generator, dtype=torch.float64, device=dev)
        t = low + (u * size).long().clamp(max=size - 1)  # (B, k - 1), uniform in each stratum
        t = torch.cat([torch.ones(n, 1, dtype=t.dtype, device=dev), t], 1)  # (B, k): t = 1 first
        weight = torch.cat([torch.ones(1, dtype=size.dtype, device=dev), size])  # (k,)
        total = self.prior_term(y0).double()  # (B,)
        rows = max(1, batch_size // max(n, 1))  # steps per denoiser call
        for start in range(0, k, rows):
            tj = t[:, start : start + rows].T.reshape(-1)  # (c * B,), step-major
            c = tj.numel() // n
            x0_c, y0_c = x0.repeat(c, 1), y0.repeat(c, 1)
            noise = torch.randn(y0_c.shape, generator=generator, dtype=y0.dtype, device=y0.device)
            yt = self.q_sample(y0_c, tj, noise)
            term = self._terms(x0_c, y0_c, yt, tj, self.denoiser(yt, tj)).double()  # (c * B,)
            total += (term.view(c, n) * weight[start : start + c, None]).sum(0)
        return -total

    # -- sampling ------------------------------------------------------------------------------
    def _noise(self, n: int, y_T: Tensor | None) -> Tensor:
        if y_T is not None:
            return y_T
        like = next(self.denoiser.parameters(), self.beta)
        return torch.randn(n, self.dim, device=self.beta.device, dtype=like.dtype)

    def _finish(self, y1: Tensor, mean: bool) -> Tensor:
        p = self.decoder(y1)
        return p.mean if mean else p.sample()

    def generate(self, n: int, mean: bool = True, steps: int | None = None) -> Tensor:
        """``n`` images: ancestral sampling over all T steps (``steps`` None or T), else DDIM
        (eta = 0) on ``steps`` time steps; the decoder's mean (``mean``) or a draw ``(n, D)``."""
        if steps is None or steps == self.T:
            return self.sample(n, mean)
        return self.ddim_sample(n, steps, mean=mean)

    @torch.inference_mode()
    def sample(self, n: int, mean: bool = True, y_T: Tensor | None = None) -> Tensor:
        r"""Ancestral sampling (Ho et al. algorithm 2): y_T ~ N(0, I) (or ``y_T``), y_{t-1} ~
        p(y_{t-1} | y_t) for t = T..2, then x_0: the decoder's mean (``mean``) or a draw
        ``(n, D)``. Draws come from the global RNG."""
        y = self._noise(n, y_T)
        for step in range(self.T, 1, -1):
            t = torch.full((y.shape[0],), step, device=y.device)
            y = self._reverse(y, t, self.denoiser(y, t)).sample()
        return self._finish(y, mean)

    def ddim_step(
        self, yt: Tensor, t: int, s: int, eta: float = 0.0, eps: Tensor | None = None
    ) -> Distribution:
        r"""The DDIM step from y_t to y_s, s < t (Song et al. 2021, eq. 12 and 16):

            y_s = sqrt(a_s) y_0-hat + sqrt(1 - a_s - sigma^2) epsilon-hat + sigma z,
            sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s),   a = alpha_bar,

        returned as a Normal (scale 0 at eta = 0: deterministic). With eta = 1 and s = t - 1,
        sigma^2 is beta-tilde_t and the step is the DDPM reverse step."""
        if not 0 <= s < t <= self.T:
            raise ValueError(f"a DDIM step needs 0 <= s < t <= {self.T}, got s={s}, t={t}")
        steps = torch.full((yt.shape[0],), t, device=yt.device)
        eps = self.denoiser(yt, steps) if eps is None else eps
        alpha_bar_t, alpha_bar_s = self._at("alpha_bar", t, yt), self._at("alpha_bar", s, yt)
        variance = eta**2 * (1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)
        mean = alpha_bar_s.sqrt() * self.predict_y0(yt, t, eps)
        mean = mean + (1 - alpha_bar_s - variance).clamp(min=0).sqrt() * eps
        return Independent(Normal(mean, variance.sqrt().expand_as(mean), False), 1, False)

    @torch.inference_mode()
    def ddim_sample(
        self,
        n: int,
        steps: int,
        eta: float = 0.0,
        mean: bool = True,
        y_T: Tensor | None = None,
    ) -> Tensor:
        r"""DDIM sampling (Song et al. 2021, sec. 4.2) on the ``steps`` time steps
        tau = round(linspace(1, T, steps)): y_T ~ N(0, I) (or ``y_T``), a :meth:`ddim_step`
        from each tau_i to tau_{i-1}, then the decoder at y_1 (its mean, or a draw) ``(n, D)``."""
        if not 2 <= steps <= self.T:
            raise ValueError(f"steps must be in 2..{self.T}, got {steps}")
        tau = torch.linspace(1, self.T, steps, dtype=torch.float64).round().long().tolist()
        y = self._noise(n, y_T)
        for t, s in zip(tau[:0:-1], tau[-2::-1], strict=True):
            y = self.ddim_step(y, t, s, eta).sample()
        return self._finish(y, mean)
