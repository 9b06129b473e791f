r"""Planar flow (Rezende and Mohamed 2015, section 4.1, appendix A.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PlanarStep(nn.Module):
    r"""z' = z + u_hat tanh(w^T z + b), with (u, w, b) computed from the encoder's context h.

    log|det| = log|1 + u_hat^T w (1 - tanh^2(w^T z + b))|. Invertible because
    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2, m(a) = -1 + softplus(a), makes w^T u_hat > -1.
    """

    def __init__(self, latent_dim: int, context_dim: int) -> None:
        super().__init__()
        self.d = latent_dim
        self.params = nn.Linear(context_dim, 2 * latent_dim + 1)

    def constrained(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(u_hat, w, b) from the context h (B, C): u constrained so that w^T u_hat > -1, which
        keeps the step invertible (Rezende and Mohamed 2015, appendix A)."""
        u, w, b = self.params(h).split([self.d, self.d, 1], dim=-1)  # (B, d), (B, d), (B, 1)
        wu = (w * u).sum(-1, keepdim=True)  # (B, 1)
        w_sq = (w * w).sum(-1, keepdim=True).clamp_min(1e-12)
        u_hat = u + (F.softplus(wu) - 1.0 - wu) * w / w_sq  # w^T u_hat = softplus(wu) - 1 > -1
        return u_hat, w, b.squeeze(-1)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat, w, b = self.constrained(h)
        a = (z * w).sum(-1) + b  # (K, B)
        t = torch.tanh(a)
        z_new = z + u_hat * t.unsqueeze(-1)  # (K, B, d)
        log_det = torch.log1p((1.0 - t * t) * (u_hat * w).sum(-1))  # (K, B), argument > -1
        return z_new, log_det

    @torch.no_grad()
    def inverse(self, z_new: torch.Tensor, h: torch.Tensor, iters: int = 100) -> torch.Tensor:
        """Solve w^T z' = alpha + (w^T u_hat) tanh(alpha + b) for alpha = w^T z by bisection (the
        left side is increasing in alpha), then z = z' - u_hat tanh(alpha + b)."""
        u_hat, w, b = self.constrained(h)
        wz, wu = (z_new * w).sum(-1), (u_hat * w).sum(-1)  # (K, B), (B,)
        lo, hi = wz - wu.abs() - 1.0, wz + wu.abs() + 1.0
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = mid + wu * torch.tanh(mid + b) > wz
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        alpha = (lo + hi) / 2
        return z_new - u_hat * torch.tanh(alpha + b).unsqueeze(-1)
