r"""Householder Sylvester normalizing flow (van den Berg et al. 2018, sections 3 and 4.2)."""

from __future__ import annotations

import torch
from torch import nn


def _reflect(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(I - 2 v v^T / ||v||^2) y, with y (K, B, d) and v (B, d)."""
    coef = 2.0 * (y * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True).clamp_min(1e-12)
    return y - coef * v


class SylvesterStep(nn.Module):
    r"""z' = z + Q R tanh(R~ Q^T z + b), with Q = H_1 ... H_M a product of M Householder
    reflections and R, R~ upper triangular, all computed from the encoder's context h.

    By Sylvester's determinant identity det(I + Q R diag(h') R~ Q^T) = prod_i (1 + h'_i R~_ii
    R_ii), with h' = 1 - tanh^2 in (0, 1]; diagonals R_ii = tanh(.) and R~_ii = tanh(.) keep every
    factor positive, so the step is invertible (no closed-form inverse is used here).
    """

    def __init__(self, latent_dim: int, context_dim: int, reflections: int = 8) -> None:
        super().__init__()
        d = latent_dim
        self.d, self.m = d, reflections
        self.params = nn.Linear(context_dim, 2 * d * d + d + reflections * d)
        self.register_buffer("triu", torch.ones(d, d).triu(1), persistent=False)
        with torch.no_grad():  # start near the identity: R, R~ small
            self.params.weight.mul_(0.1)
            self.params.bias.zero_()

    def _params(self, h: torch.Tensor):
        d = self.d
        r1, r2, b, v = self.params(h).split([d * d, d * d, d, self.m * d], dim=-1)
        r1, r2 = r1.unflatten(-1, (d, d)), r2.unflatten(-1, (d, d))  # (B, d, d)
        diag1 = torch.tanh(r1.diagonal(dim1=-2, dim2=-1))  # (B, d)
        diag2 = torch.tanh(r2.diagonal(dim1=-2, dim2=-1))
        R = r1 * self.triu + torch.diag_embed(diag1)  # (B, d, d), upper triangular
        R_tilde = r2 * self.triu + torch.diag_embed(diag2)
        return R, R_tilde, diag1 * diag2, b, v.unflatten(-1, (self.m, d))  # v (B, M, d)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R, R_tilde, rr, b, v = self._params(h)
        y = z
        for j in range(self.m):  # Q^T z = H_M ... H_1 z
            y = _reflect(y, v[:, j])
        u = torch.einsum("bij,...bj->...bi", R_tilde, y) + b  # (K, B, d)
        t = torch.tanh(u)
        y = torch.einsum("bij,...bj->...bi", R, t)
        for j in reversed(range(self.m)):  # Q y = H_1 ... H_M y
            y = _reflect(y, v[:, j])
        log_det = torch.log1p((1.0 - t * t) * rr).sum(-1)  # (K, B)
        return z + y, log_det
