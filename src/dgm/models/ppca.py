r"""Probabilistic PCA: the linear-Gaussian latent-variable model, fitted exactly.

    p(z) = N(0, I_q),   p(x | z) = N(W z + mu, sigma^2 I_D)
    p(x) = N(mu, C),    C = W W^T + sigma^2 I_D
    p(z | x) = N(M^{-1} W^T (x - mu), sigma^2 M^{-1}),   M = W^T W + sigma^2 I_q

Reference: M. E. Tipping and C. M. Bishop, "Probabilistic principal component analysis",
J. R. Statist. Soc. B 61(3), 611-622 (1999); equation numbers below are theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
)

from dgm.errors import DGMError

#: rows of x converted to float64 and multiplied at once when computing moments
DEFAULT_CHUNK_SIZE = 4096


def sample_moments(
    x: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The sample mean and the (biased, 1/N) sample covariance, in float64.

        x_bar = (1/N) sum_n x_n,   S = (1/N) sum_n (x_n - x_bar)(x_n - x_bar)^T

    x (N, D) of any float dtype -> x_bar (D,), S (D, D). Two passes over ``chunk_size`` rows at a
    time, so memory stays O(chunk_size D + D^2) even for x (60000, 784) in float32.
    """
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be (N, D) with N >= 1, got shape {tuple(x.shape)}")
    n, d = x.shape
    total = torch.zeros(d, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk_size):
        total += x[start : start + chunk_size].double().sum(0)  # (D,)
    x_bar = total / n
    S = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk_size):
        xc = x[start : start + chunk_size].double() - x_bar  # (B, D)
        S += xc.T @ xc  # (D, D)
    return x_bar, S / n


def _is_tiny(value: torch.Tensor, scale: torch.Tensor, dim: int) -> bool:
    """Whether ``value`` is lost in ``dim`` float64 roundoffs next to ``scale``."""
    return bool(value <= dim * torch.finfo(torch.float64).eps * scale)


class PPCA(nn.Module):
    r"""Probabilistic PCA p(x, z) = N(x; W z + mu, sigma^2 I_D) N(z; 0, I_q).

    Args:
        W: factor loadings (D, q).
        mu: data mean (D,).
        sigma2: isotropic noise variance sigma^2 > 0, a scalar.

    The parameters are buffers (fitted by :meth:`fit_closed_form` or :meth:`fit_em`, not by
    gradients), so ``.to(device, dtype)`` moves them. The interface mirrors
    :class:`~dgm.models.DeepLatentModel`: ``likelihood(z)`` with z (K, B, q) has batch shape
    (K, B) and event (D,); ``log_joint(x, z)`` with x (B, D) returns (K, B). In addition
    ``log_prob(x)`` is the exact log p(x) (B,) and ``posterior(x)`` the exact p(z | x), which can
    serve as the proposal of :func:`dgm.evaluate.importance_log_likelihood`.
    """

    def __init__(self, W: torch.Tensor, mu: torch.Tensor, sigma2: torch.Tensor | float) -> None:
        super().__init__()
        if W.ndim != 2 or mu.shape != W.shape[:1]:
            raise ValueError(f"need W (D, q) and mu (D,), got {tuple(W.shape)}, {tuple(mu.shape)}")
        self.data_dim, self.latent_dim = W.shape
        self.register_buffer("W", W.clone())
        self.register_buffer("mu", mu.clone())
        self.register_buffer("sigma2", torch.as_tensor(sigma2, dtype=W.dtype, device=W.device))

    def _M(self) -> torch.Tensor:
        """M = W^T W + sigma^2 I_q  (q, q)."""
        eye = torch.eye(self.latent_dim, dtype=self.W.dtype, device=self.W.device)
        return self.W.T @ self.W + self.sigma2 * eye

    def prior(self) -> Distribution:
        zeros = torch.zeros(self.latent_dim, dtype=self.W.dtype, device=self.W.device)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def likelihood(self, z: torch.Tensor) -> Distribution:
        r"""p(x | z) = N(W z + mu, sigma^2 I_D);  z (..., q) -> batch shape (...), event (D,)."""
        loc = z @ self.W.T + self.mu  # (..., D)
        return Independent(Normal(loc, self.sigma2.sqrt().expand_as(loc)), 1)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r"""log p(x, z) = log p(x | z) + log p(z);  x (B, D), z (K, B, q) -> (K, B)."""
        return self.likelihood(z).log_prob(x) + self.prior().log_prob(z)

    def sample(self, n: int) -> tuple[torch.Tensor, Distribution]:
        """Draw z_i ~ p(z), i = 1..n; return z (n, q) and p(x | z) (batch shape (n,))."""
        z = self.prior().sample((n,))  # (n, q)
        return z, self.likelihood(z)

    def marginal(self) -> Distribution:
        r"""p(x) = N(mu, W W^T + sigma^2 I_D), event shape (D,)."""
        return LowRankMultivariateNormal(self.mu, self.W, self.sigma2 * torch.ones_like(self.mu))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""Exact log p(x);  x (B, D) -> (B,). O(B D q) through the Woodbury identity."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        r"""Exact p(z | x) = N(M^{-1} W^T (x - mu), sigma^2 M^{-1});  x (B, D) -> batch (B,).

        ``index`` (the rows' datapoint ids) is accepted and ignored, so this method can stand
        wherever a variational posterior ``q(x, index)`` is expected.
        """
        M = self._M()  # (q, q)
        loc = torch.linalg.solve(M, (x - self.mu) @ self.W, left=False)  # (B, q); M symmetric
        cov = self.sigma2 * torch.cholesky_inverse(torch.linalg.cholesky(M))  # (q, q)
        return MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov))

    def average_log_likelihood(
        self, x: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> float:
        r"""(1/N) sum_n log p(x_n) in nats per example; x (N, D), evaluated in chunks of rows."""
        total = sum(
            self.log_prob(x[s : s + chunk_size].to(self.W)).double().sum().item()
            for s in range(0, x.shape[0], chunk_size)
        )
        return total / x.shape[0]

    def average_log_likelihood_from_moments(
        self, x_bar: torch.Tensor, S: torch.Tensor, SW: torch.Tensor | None = None
    ) -> float:
        r"""(1/N) sum_n log p(x_n) from the data's mean x_bar (D,) and covariance S (D, D) alone.

            -1/2 [D log 2 pi + log|C| + tr(C^{-1} S) + (x_bar - mu)^T C^{-1} (x_bar - mu)]

        with log|C| = (D - q) log sigma^2 + log|M| and C^{-1} = (I - W M^{-1} W^T) / sigma^2
        (Woodbury). ``SW = S W`` (D, q) may be passed in. O(D^2 q), no pass over the data.
        """
        D, q = self.data_dim, self.latent_dim
        W, s2 = self.W, self.sigma2
        SW = S @ W if SW is None else SW  # (D, q)
        L_M = torch.linalg.cholesky(self._M())  # (q, q)
        log_det_C = (D - q) * s2.log() + 2 * L_M.diagonal().log().sum()
        WtSW = W.T @ SW  # (q, q)
        tr_Cinv_S = (S.trace() - torch.cholesky_solve(WtSW, L_M).trace()) / s2
        r = x_bar - self.mu  # (D,)
        Wtr = (W.T @ r)[:, None]  # (q, 1)
        maha = (r @ r - (Wtr * torch.cholesky_solve(Wtr, L_M)).sum()) / s2
        return (-0.5 * (D * math.log(2 * math.pi) + log_det_C + tr_Cinv_S + maha)).item()

    @classmethod
    def fit_closed_form(
        cls, x: torch.Tensor, latent_dim: int, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> PPCA:
        r"""The maximum-likelihood PPCA (Tipping and Bishop, eqs. 7-8), in float64.

            mu = x_bar,  sigma^2 = (1/(D - q)) sum_{j>q} lambda_j,  W = U_q (L_q - sigma^2 I)^{1/2}

        with lambda_1 >= ... >= lambda_D the eigenvalues of the sample covariance S (1/N), U_q the
        leading q eigenvectors and L_q = diag(lambda_1..q); W is unique up to a rotation W R.
        x (N, D) -> a float64 model; raises DGMError when sigma^2 = 0 (the data span <= q dims).
        """
        x_bar, S = sample_moments(x, chunk_size)
        D = S.shape[0]
        if not 1 <= latent_dim < D:
            raise ValueError(f"latent_dim must be in [1, {D - 1}] for D = {D}, got {latent_dim}")
        lam, U = torch.linalg.eigh(S)  # ascending
        lam, U = lam.flip(0), U.flip(1)  # (D,), (D, D): descending
        sigma2 = lam[latent_dim:].mean()
        if _is_tiny(sigma2, lam[0], D):
            raise DGMError(
                f"PPCA: the data span at most {latent_dim} dimensions, so the ML noise variance is "
                f"0: choose latent_dim < {latent_dim}"
            )
        W = U[:, :latent_dim] * (lam[:latent_dim] - sigma2).clamp(min=0).sqrt()  # (D, q)
        return cls(W, x_bar, sigma2)

    @classmethod
    def fit_em(
        cls,
        x: torch.Tensor,
        latent_dim: int,
        max_iter: int = 1000,
        tol: float = 1e-6,
        seed: int = 0,
        on_iter: Callable[[int, float], None] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> tuple[PPCA, list[float]]:
        r"""Maximum likelihood by EM in the covariance form (Tipping and Bishop, eqs. 27-28).

            W_new = S W (sigma^2 I + M^{-1} W^T S W)^{-1}
            sigma^2_new = (1/D) tr(S - S W M^{-1} W_new^T)

        mu = x_bar is exact from the start; W starts from N(0, tr(S) / D) entries (a
        ``torch.Generator`` seeded with ``seed``) and sigma^2 from tr(S) / D. Each iteration costs
        O(D^2 q) on the moments, none on the data. Returns the model and ``history``:
        ``history[t]`` is the average log-likelihood per example (nats) after t EM updates
        (``history[0]`` the initialization; EM never decreases it). Stops after ``max_iter``
        updates or once an update gains less than ``tol`` nats per example. ``on_iter(t, ll)`` is
        called with every entry. EM converges linearly and slowly when sigma^2 is small next to
        the leading eigenvalues of S (the column norms of W creep); :meth:`fit_closed_form` gives
        the same maximum directly.
        """
        x_bar, S = sample_moments(x, chunk_size)
        D = S.shape[0]
        if not 1 <= latent_dim < D:
            raise ValueError(f"latent_dim must be in [1, {D - 1}] for D = {D}, got {latent_dim}")
        g = torch.Generator(device=S.device).manual_seed(seed)
        var = S.trace() / D
        if _is_tiny(var, torch.ones_like(var), 1):
            raise DGMError("PPCA: the data are constant (zero variance); there is nothing to fit")
        W = torch.randn(D, latent_dim, generator=g, dtype=S.dtype, device=S.device) * var.sqrt()
        model = cls(W, x_bar, var)
        eye = torch.eye(latent_dim, dtype=S.dtype, device=S.device)
        history: list[float] = []
        for t in range(max_iter + 1):
            W, s2 = model.W, model.sigma2
            SW = S @ W  # (D, q)
            history.append(model.average_log_likelihood_from_moments(x_bar, S, SW))
            if on_iter is not None:
                on_iter(t, history[-1])
            if t == max_iter or (t > 0 and history[-1] - history[-2] < tol):
                break
            L_M = torch.linalg.cholesky(model._M())  # (q, q)
            Minv_WtSW = torch.cholesky_solve(W.T @ SW, L_M)  # (q, q)
            W_new = torch.linalg.solve(s2 * eye + Minv_WtSW, SW, left=False)  # (D, q)
            SW_Minv = torch.cholesky_solve(SW.T, L_M).T  # (D, q): S W M^{-1}, M symmetric
            s2_new = (S.trace() - (SW_Minv * W_new).sum()) / D
            if _is_tiny(s2_new, var, D):
                raise DGMError(
                    f"PPCA: EM drove sigma^2 to 0 at iteration {t + 1} (the data span at most "
                    f"{latent_dim} dimensions): choose latent_dim < {latent_dim}"
                )
            model = cls(W_new, x_bar, s2_new)
        return model, history
