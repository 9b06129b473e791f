r"""The Gaussian mixture model, fitted by exact EM.

    p(z = k) = pi_k,   p(x | z = k) = N(x; mu_k, Sigma_k),   p(x) = sum_k pi_k N(x; mu_k, Sigma_k)

Sigma_k is "full" (stored as its Cholesky factor L_k, Sigma_k = L_k L_k^T) or "diag" (stored as
its diagonal). EM: Dempster, Laird and Rubin (1977); Bishop, "Pattern Recognition and Machine
Learning" (2006), section 9.2.2. k-means++ seeding: Arthur and Vassilvitskii (2007).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from dgm.errors import DGMError
from dgm.models.kmeans import chunks, lloyd, seed_centres

CovarianceType = Literal["full", "diag"]

#: rows of x handled at once in the E- and M-steps (a (chunk, D) float64 block per component)
DEFAULT_CHUNK_SIZE = 4096


class GaussianMixture(nn.Module):
    r"""p(x, z) = pi_z N(x; mu_z, Sigma_z) with z in {0, ..., K-1}.

    Args:
        weights: mixture weights pi (K,), positive, summing to 1.
        means: mu (K, D).
        covariance: for "full" the Cholesky factors L (K, D, D) of Sigma_k = L_k L_k^T (lower
            triangular, positive diagonal); for "diag" the variances (K, D).
        covariance_type: "full" or "diag".

    Parameters are buffers (fitted by :meth:`fit_em`). Use :meth:`from_covariances` to build one
    from covariance matrices. ``log_prob``, ``responsibilities`` work through Cholesky factors and
    triangular solves, one component and ``chunk_size`` rows at a time.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covariance: torch.Tensor,
        covariance_type: CovarianceType = "full",
    ) -> None:
        super().__init__()
        K, D = means.shape
        expected = {"full": (K, D, D), "diag": (K, D)}.get(covariance_type)
        if expected is None:
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}")
        if weights.shape != (K,) or covariance.shape != expected:
            raise ValueError(
                f"need weights ({K},) and covariance {expected} for means ({K}, {D}), got "
                f"{tuple(weights.shape)} and {tuple(covariance.shape)}"
            )
        self.n_components, self.data_dim = K, D
        self.covariance_type: CovarianceType = covariance_type
        self.register_buffer("weights", weights.clone())
        self.register_buffer("means", means.clone())
        name = "scale_tril" if covariance_type == "full" else "variances"
        self.register_buffer(name, covariance.clone())

    @classmethod
    def from_covariances(
        cls,
        weights: torch.Tensor,
        means: torch.Tensor,
        covariances: torch.Tensor,
        covariance_type: CovarianceType = "full",
    ) -> GaussianMixture:
        """Build from covariance matrices (K, D, D) ("full") or variances (K, D) ("diag")."""
        if covariance_type == "full":
            covariances = torch.linalg.cholesky(covariances)  # (K, D, D)
        return cls(weights, means, covariances, covariance_type)

    def covariances(self) -> torch.Tensor:
        """Sigma (K, D, D) for "full", the variances (K, D) for "diag"."""
        if self.covariance_type == "full":
            return self.scale_tril @ self.scale_tril.mT
        return self.variances

    def _component(self, index: torch.Tensor | slice) -> Distribution:
        if self.covariance_type == "full":
            return MultivariateNormal(self.means[index], scale_tril=self.scale_tril[index])
        return Independent(Normal(self.means[index], self.variances[index].sqrt()), 1)

    def prior(self) -> Distribution:
        """p(z) = Categorical(pi) over the K components."""
        return Categorical(probs=self.weights)

    def likelihood(self, z: torch.Tensor) -> Distribution:
        r"""p(x | z) = N(mu_z, Sigma_z);  z integer (...) -> batch shape (...), event (D,).

        For "full" this gathers a (D, D) factor per entry of z: keep z small when D is large.
        """
        return self._component(z)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r"""log p(x, z) = log pi_z + log N(x; mu_z, Sigma_z);  x (B, D), z (K, B) -> (K, B)."""
        return self.likelihood(z).log_prob(x) + self.prior().log_prob(z)

    def distribution(self) -> Distribution:
        """p(x) as a torch ``MixtureSameFamily`` (event shape (D,))."""
        return MixtureSameFamily(self.prior(), self._component(slice(None)))

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""log N(x_n; mu_k, Sigma_k);  x (B, D) -> (B, K).

        log N = -1/2 (D log 2 pi + log|Sigma_k| + ||L_k^{-1} (x - mu_k)||^2), one triangular solve
        per component (full) or an elementwise ratio (diag); exact differences, no expansion of
        the square, so no cancellation.
        """
        x = x.to(self.means)
        if self.covariance_type == "full":
            log_det = 2 * self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
        else:
            log_det = self.variances.log().sum(-1)  # (K,)
        maha = torch.empty(x.shape[0], self.n_components, dtype=x.dtype, device=x.device)
        for k in range(self.n_components):
            diff = x - self.means[k]  # (B, D)
            if self.covariance_type == "full":
                # y L_k^T = diff  <=>  y_n = L_k^{-1} (x_n - mu_k) for every row n
                y = torch.linalg.solve_triangular(
                    self.scale_tril[k].mT, diff, upper=True, left=False
                )
                maha[:, k] = y.square().sum(-1)
            else:
                maha[:, k] = (diff.square() / self.variances[k]).sum(-1)
        return -0.5 * (self.data_dim * math.log(2 * math.pi) + log_det + maha)  # (B, K)

    def _log_joint_all(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights.log() + self.component_log_prob(x)  # (B, K)

    def log_prob(self, x: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
        r"""Exact log p(x) = logsumexp_k (log pi_k + log N(x; mu_k, Sigma_k));  x (B, D) -> (B,)."""
        parts = [
            torch.logsumexp(self._log_joint_all(xb), -1) for _, xb in chunks(x, chunk_size, x.dtype)
        ]
        return torch.cat(parts)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        r"""p(z = k | x) = pi_k N(x; mu_k, Sigma_k) / p(x);  x (B, D) -> (B, K), rows sum to 1."""
        return torch.softmax(self._log_joint_all(x), -1)

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw z_i ~ p(z), x_i ~ p(x | z_i), i = 1..n; return z (n,) and x (n, D)."""
        z = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(
            n, self.data_dim, generator=generator, dtype=self.means.dtype, device=self.means.device
        )
        if self.covariance_type == "full":
            x = torch.empty_like(eps)
            for k in range(self.n_components):  # one (D, D) factor per component, not per sample
                idx = z == k
                x[idx] = self.means[k] + eps[idx] @ self.scale_tril[k].mT
        else:
            x = self.means[z] + eps * self.variances[z].sqrt()
        return z, x

    @classmethod
    def fit_em(
        cls,
        x: torch.Tensor,
        n_components: int,
        covariance_type: CovarianceType = "full",
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-4,
        seed: int = 0,
        init: Literal["kmeans++", "random"] = "kmeans++",
        on_iter: Callable[[int, float], None] | None = None,
        lloyd_iter: int = 10,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> tuple[GaussianMixture, list[float]]:
        r"""Maximum likelihood by EM, in float64.

            E: r_nk = pi_k N(x_n; mu_k, Sigma_k) / p(x_n)
            M: N_k = sum_n r_nk,  pi_k = N_k / N,  mu_k = (1/N_k) sum_n r_nk x_n,
               Sigma_k = (1/N_k) sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T + reg_covar I

        (Bishop 2006, eqs. 9.23-9.27; ``reg_covar`` on the diagonal in every M-step, as scikit-learn
        does.) Initialization: K centres seeded by k-means++ (D^2 sampling, Arthur and Vassilvitskii
        2007) or, with ``init="random"``, K data points drawn uniformly without replacement, both
        from a ``torch.Generator`` seeded with ``seed``; then ``lloyd_iter`` Lloyd (k-means)
        iterations; the hard assignments give the initial responsibilities and the first M-step.
        Returns the model and ``history``: ``history[t]`` is the average log-likelihood per example
        (nats) after t EM updates (EM never decreases it; the last entry belongs to the returned
        model). Stops after ``max_iter`` updates or once ``|history[t] - history[t-1]| < tol``.
        ``on_iter(t, ll)`` is called with every entry.

        Raises DGMError naming the component and iteration when a covariance is not positive
        definite or a component loses all its responsibility.
        """
        if x.ndim != 2 or not 1 <= n_components <= x.shape[0]:
            raise ValueError(f"need x (N, D) with N >= n_components = {n_components}")
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}")
        g = torch.Generator(device=x.device).manual_seed(seed)
        centres = seed_centres(x, n_components, init, g, chunk_size)
        labels = lloyd(x, centres, lloyd_iter, chunk_size)
        resp = nn.functional.one_hot(labels, n_components).double()  # (N, K)
        model = m_step(x, resp, covariance_type, reg_covar, 0, chunk_size)
        history: list[float] = []
        for t in range(max_iter + 1):
            resp, ll = model._e_step(x, chunk_size)
            history.append(ll)
            if on_iter is not None:
                on_iter(t, ll)
            if t == max_iter or (t > 0 and abs(history[-1] - history[-2]) < tol):
                break
            model = m_step(x, resp, covariance_type, reg_covar, t + 1, chunk_size)
        return model, history

    def _e_step(self, x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, float]:
        """Responsibilities (N, K) and the average log-likelihood per example."""
        resp = torch.empty(x.shape[0], self.n_components, dtype=self.means.dtype, device=x.device)
        total = 0.0
        for start, xb in chunks(x, chunk_size, self.means.dtype):
            log_joint = self._log_joint_all(xb)  # (B, K)
            log_px = torch.logsumexp(log_joint, -1, keepdim=True)  # (B, 1)
            resp[start : start + xb.shape[0]] = (log_joint - log_px).exp()
            total += log_px.sum().item()
        return resp, total / x.shape[0]


def m_step(
    x: torch.Tensor,
    resp: torch.Tensor,
    covariance_type: CovarianceType,
    reg_covar: float,
    iteration: int,
    chunk_size: int,
) -> GaussianMixture:
    """The M-step (Bishop eqs. 9.24-9.26) from responsibilities (N, K); two passes over x."""
    N, D = x.shape
    nk = resp.sum(0)  # (K,)
    when = "initialization" if iteration == 0 else f"EM iteration {iteration}"
    if (nk < 1e-8).any():
        k = int((nk < 1e-8).nonzero()[0])
        raise DGMError(
            f"GMM component {k} is empty at {when} (it holds {nk[k].item():.2g} examples): "
            f"use fewer components or another seed"
        )
    sums = torch.zeros(resp.shape[1], D, dtype=resp.dtype, device=resp.device)
    for start, xb in chunks(x, chunk_size, resp.dtype):
        sums += resp[start : start + xb.shape[0]].T @ xb  # (K, D)
    means = sums / nk[:, None]  # (K, D)
    K = means.shape[0]
    shape = (K, D, D) if covariance_type == "full" else (K, D)
    cov = torch.zeros(shape, dtype=resp.dtype, device=resp.device)
    for start, xb in chunks(x, chunk_size, resp.dtype):
        r = resp[start : start + xb.shape[0]]  # (B, K)
        for k in range(K):
            xc = xb - means[k]  # (B, D)
            if covariance_type == "full":
                cov[k] += (xc * r[:, k : k + 1]).T @ xc  # (D, D)
            else:
                cov[k] += r[:, k] @ xc.square()  # (D,)
    cov /= nk.view(K, *([1] * (cov.ndim - 1)))
    if covariance_type == "full":
        cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
        L, info = torch.linalg.cholesky_ex(cov)  # (K, D, D); info[k] > 0 where it failed
        pivots = L.diagonal(dim1=-2, dim2=-1).square()  # (K, D): Sigma_k = L_k L_k^T
        scale = cov.diagonal(dim1=-2, dim2=-1).amax(-1)  # (K,)
        failed, covariance = info > 0, L
    else:
        cov += reg_covar
        pivots, scale, covariance = cov, cov.amax(-1), cov
        failed = torch.zeros(K, dtype=torch.bool, device=cov.device)
    # Singular: a pivot that is not positive, or lost in D roundoffs next to the largest variance.
    tiny = D * torch.finfo(resp.dtype).eps * scale  # (K,)
    bad = failed | ~(pivots > tiny[:, None]).all(-1)  # (K,); the comparison also catches NaN
    if bad.any():
        k = int(bad.nonzero()[0])
        suggested = max(10 * reg_covar, 1e-6 * scale[k].item(), 1e-6)
        suggested = 10 ** math.ceil(math.log10(suggested))
        raise DGMError(
            f"GMM component {k} has a singular covariance at {when} (reg_covar = {reg_covar:g}, "
            f"{nk[k].item():.4g} examples): raise reg_covar, e.g. to {suggested:g} "
            f"(--set model.reg_covar={suggested:g})"
        )
    return GaussianMixture(nk / N, means, covariance, covariance_type)
