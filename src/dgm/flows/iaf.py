r"""Inverse autoregressive flow (Kingma et al. 2016, section 4 and algorithm 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dgm.nn import MADE


class IAFStep(nn.Module):
    r"""[m, s] = MADE(z, h); sigma = sigmoid(s + forget_bias); z' = sigma * z + (1 - sigma) * m.

    The numerically stable LSTM-type update of the paper (eq. 14); log|det| = sum_i log sigma_i
    because dz'/dz is triangular. ``reverse`` flips the autoregressive order (alternate it between
    steps). ``forget_bias`` starts sigma near 1, so a new flow begins near the identity.
    """

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        hidden: list[int] | None = None,
        reverse: bool = False,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        hidden = hidden or [context_dim, context_dim]
        self.made = MADE(latent_dim, hidden, context_dim, n_out=2, reverse=reverse)
        self.forget_bias = forget_bias

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = self.made(z, h)  # (K, B, d) each
        s = s + self.forget_bias
        sigma = torch.sigmoid(s)
        z_new = sigma * z + (1.0 - sigma) * m
        return z_new, F.logsigmoid(s).sum(-1)  # (K, B, d), (K, B)

    @torch.no_grad()
    def inverse(self, z_new: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """d passes: pass k solves the dimension of degree k (the k-th in the flow's order), whose
        (m, s) depend only on dimensions already solved. Only that dimension is updated: the others
        stay finite (at z'), since a provisional value could overflow and the masked weights'
        0 * inf = nan would then reach the solved dimensions too."""
        z = z_new
        for k in range(1, z_new.shape[-1] + 1):
            m, s = self.made(z, h)
            sigma = torch.sigmoid(s + self.forget_bias)
            z = torch.where(self.made.degrees == k, (z_new - (1.0 - sigma) * m) / sigma, z)
        return z
