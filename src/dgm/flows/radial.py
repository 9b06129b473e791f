r"""Radial flow (Rezende and Mohamed 2015, section 4.1, appendix A.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RadialStep(nn.Module):
    r"""z' = z + beta h(alpha, r) (z - z_0), h = 1 / (alpha + r), r = ||z - z_0||, with (z_0,
    alpha, beta) from the encoder's context; alpha = softplus(.) > 0 and beta = -alpha +
    softplus(.) > -alpha keep it invertible.

    log|det| = (d - 1) log(1 + beta h) + log(1 + beta h - beta h^2 r).
    """

    def __init__(self, latent_dim: int, context_dim: int) -> None:
        super().__init__()
        self.d = latent_dim
        self.params = nn.Linear(context_dim, latent_dim + 2)

    def _params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z0, a, b = self.params(h).split([self.d, 1, 1], dim=-1)  # (B, d), (B, 1), (B, 1)
        alpha = F.softplus(a).squeeze(-1) + 1e-6  # (B,)
        beta = -alpha + F.softplus(b).squeeze(-1)
        return z0, alpha, beta

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z0, alpha, beta = self._params(h)
        diff = z - z0  # (K, B, d)
        r = diff.norm(dim=-1)  # (K, B)
        hr = 1.0 / (alpha + r)
        bh = beta * hr
        z_new = z + (bh).unsqueeze(-1) * diff
        log_det = (self.d - 1) * torch.log1p(bh) + torch.log1p(bh - beta * hr * hr * r)
        return z_new, log_det

    @torch.no_grad()
    def inverse(self, z_new: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """r' = r (1 + beta / (alpha + r)) is a quadratic in r: r^2 + (alpha + beta - r') r -
        alpha r' = 0, whose positive root gives r, then z - z_0 = (z' - z_0) / (1 + beta h)."""
        z0, alpha, beta = self._params(h)
        diff_new = z_new - z0
        r_new = diff_new.norm(dim=-1)
        c = alpha + beta - r_new
        r = (-c + torch.sqrt(c * c + 4 * alpha * r_new)) / 2
        return z0 + diff_new / (1.0 + beta / (alpha + r)).unsqueeze(-1)
