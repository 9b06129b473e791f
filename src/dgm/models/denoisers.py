r"""Denoisers for :class:`dgm.models.diffusion.GaussianDiffusion`: networks epsilon_theta(y_t, t)
that predict the noise of y_t = sqrt(alpha_bar_t) y_0 + sqrt(1 - alpha_bar_t) epsilon.

A denoiser is a module with an int attribute ``dim`` whose ``forward(y, t)`` maps y ``(B, dim)``
and t ``(B,)`` (int64, in 1..T) to epsilon-hat ``(B, dim)``. :class:`UNet` is a small U-Net with
a time embedding, for images; :class:`MLPDenoiser` is for low-dimensional data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.nn import MLP


def timestep_embedding(t: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Sinusoidal embedding of steps t ``(B,)`` -> ``(B, dim)`` (Vaswani et al. 2017, sec. 3.5):
    [sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim / 2)), i = 0..dim/2-1 (dim even)."""
    half = dim // 2
    w = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / half)
    angle = t.to(dtype).unsqueeze(-1) * w  # (B, dim / 2)
    return torch.cat([angle.sin(), angle.cos()], -1)


class ResBlock(nn.Module):
    r"""h = conv(SiLU(GN(x))) + W e(t); out = x' + conv(SiLU(GN(h))), x' = x or a 1x1 conv of x
    when the channels change (Ho et al. appendix B, after Zagoruyko and Komodakis 2016)."""

    def __init__(
        self, c_in: int, c_out: int, time_dim: int, groups: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.time(F.silu(e))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    r"""A small U-Net epsilon_theta(y_t, t) for ``in_channels`` x ``image_size``^2 images
    (Ronneberger et al. 2015; Ho et al. appendix B, without attention).

    A sinusoidal embedding of t through a two-layer MLP (width ``time_dim``, default
    4 ``channels``) enters every residual block. Level i has ``channels * channel_mult[i]``
    channels and ``blocks`` residual blocks, then halves the resolution (28 -> 14 -> 7 at the
    default); two blocks at the bottom; the way up doubles it again, each level's first block
    taking the matching level's output as a skip connection. GroupNorm with ``groups`` groups;
    the last convolution starts at zero (epsilon-hat = 0). ``forward(y, t)``: y ``(B, D)``,
    D = in_channels * image_size^2, t ``(B,)`` -> ``(B, D)``.

    >>> UNet()(torch.zeros(2, 784), torch.tensor([1, 1000])).shape
    torch.Size([2, 784])
    """

    def __init__(
        self,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        time_dim: int | None = None,
        blocks: int = 1,
        groups: int = 8,
        dropout: float = 0.0,
        image_size: int = 28,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if image_size % 2 ** len(channel_mult):
            raise ValueError(f"image_size {image_size} must halve {len(channel_mult)} times")
        if channels % 2 or any(channels * m % groups for m in channel_mult):
            raise ValueError(f"channels x channel_mult must be even and divisible by {groups}")
        time_dim = time_dim or 4 * channels
        self.image_size, self.in_channels = image_size, in_channels
        self.dim = in_channels * image_size**2
        self.embed_dim = channels
        self.time = nn.Sequential(
            nn.Linear(channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in channel_mult]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = channels
        for width in widths:
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(c, width, time_dim, groups, dropout))
                c = width
            self.down.append(level)
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.middle = nn.ModuleList([ResBlock(c, c, time_dim, groups, dropout) for _ in range(2)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for width in reversed(widths):
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1))  # after nearest x2
            level = nn.ModuleList()
            for j in range(blocks):
                level.append(
                    ResBlock(c + (width if j == 0 else 0), width, time_dim, groups, dropout)
                )
                c = width
            self.up.append(level)
        self.out_norm = nn.GroupNorm(groups, c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        size = self.image_size
        h = self.stem(y.reshape(-1, self.in_channels, size, size))  # (B, C, 28, 28)
        e = self.time(timestep_embedding(t, self.embed_dim, h.dtype))  # (B, time_dim)
        skips = []
        for level, down in zip(self.down, self.downsample, strict=True):
            for block in level:
                h = block(h, e)
            skips.append(h)
            h = down(h)  # resolution halves
        for block in self.middle:
            h = block(h, e)
        for level, up in zip(self.up, self.upsample, strict=True):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # resolution doubles
            h = torch.cat([h, skips.pop()], 1)
            for block in level:
                h = block(h, e)
        return self.out(F.silu(self.out_norm(h))).reshape(y.shape)  # (B, D)


class MLPDenoiser(nn.Module):
    r"""epsilon_theta(y_t, t) = MLP([y_t, e(t)]) for low-dimensional data: y ``(B, dim)``, the
    sinusoidal embedding e(t) ``(B, time_dim)``, ``hidden`` units per layer (an int: one layer).

    >>> MLPDenoiser(2, 32, 16)(torch.zeros(5, 2), torch.ones(5, dtype=torch.long)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: int | Sequence[int] = 64,
        time_dim: int = 32,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        hidden = [hidden] if isinstance(hidden, int) else list(hidden)
        self.dim, self.time_dim = dim, time_dim
        self.net = MLP(dim + time_dim, hidden, dim, activation)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        e = timestep_embedding(t, self.time_dim, y.dtype)  # (B, time_dim)
        return self.net(torch.cat([y, e], -1))
