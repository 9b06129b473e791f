r"""Minibatches of a dataset held as one tensor on its device, with optional binarization.

Binarization turns grey levels :math:`x \in [0, 1]^D` into :math:`b \sim \mathrm{Bernoulli}(x)`:

- ``dynamic``: a fresh draw every time an example is served (Salakhutdinov and Murray, 2008;
  the IWAE paper's setting, Burda et al., 2016, sec. 5);
- ``static``: one draw made at construction and kept (Larochelle and Murray, 2011);
- ``none``: the grey levels themselves, optionally dequantized.

Dequantization turns the 256 grey levels into a density problem: x = (pixel + u) / 256 with
u ~ U[0, 1)^D (Uria et al. 2013; Theis et al. 2016), fresh per batch in training and fixed for a
test set. A density p on [0, 1)^D then gives log P(pixels) >= log p(x) - D log 256 (Jensen),
the bound behind the bits per dimension that papers report.

No per-item Python loader: an epoch is one ``randperm`` and a sequence of index gathers.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

import torch
from torch import Tensor

from dgm.errors import UsageError

__all__ = [
    "Binarize",
    "TensorBatches",
    "binarize_fixed",
    "dequantize",
    "dequantize_fixed",
    "to_unit_interval",
]


class Binarize(StrEnum):
    """How grey levels become the observed ``x``: see the module docstring."""

    DYNAMIC = "dynamic"
    STATIC = "static"
    NONE = "none"


def to_unit_interval(images: Tensor) -> Tensor:
    """uint8 images ``(N, H, W)`` -> float32 ``(N, H * W)`` in ``[0, 1]``, as ``x / 255``."""
    if images.dtype != torch.uint8 or images.ndim < 2:
        raise UsageError(
            f"to_unit_interval expects uint8 images of shape (N, H, W), "
            f"got {images.dtype} of shape {tuple(images.shape)}"
        )
    x = images.reshape(images.shape[0], -1).to(torch.float32)  # (N, D), a new tensor
    return x.div_(255.0)  # in place: one float copy of the data set at a time, not two


#: binarize_fixed draws its uniforms this many at a time (the draws are the same as in one go)
BINARIZE_CHUNK = 2**22


def binarize_fixed(x: Tensor, seed: int, dtype: torch.dtype | None = None) -> Tensor:
    r"""One fixed draw :math:`b = \mathbb{1}[u < x]`, :math:`u \sim U(0, 1)`, so :math:`b \sim
    \mathrm{Bernoulli}(x)`.

    The uniforms come from a CPU generator seeded with ``seed``, so the result is the same on
    every device (use it to binarize a test set once, reproducibly). Same shape as ``x``, and its
    dtype unless ``dtype`` is given (``torch.bool`` holds a data set in a quarter of the
    memory). The uniforms are drawn a few million at a time, in order, which draws the same
    numbers as one call for the whole shape without holding them all.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    src = x.detach().cpu()
    n = src.shape[0] if src.dim() else 1
    flat = src.reshape(n, src.numel() // n if n else 0)  # (N, rest)
    out = torch.empty(flat.shape, dtype=dtype or x.dtype)
    rows = max(1, BINARIZE_CHUNK // max(flat.shape[1], 1))
    for start in range(0, flat.shape[0], rows):
        part = flat[start : start + rows]
        out[start : start + rows] = torch.rand(part.shape, generator=g, dtype=x.dtype) < part
    return out.reshape(x.shape).to(device=x.device)


def dequantize(x: Tensor, u: Tensor) -> Tensor:
    """Grey levels x = pixel / 255 and uniforms u in [0, 1) -> (pixel + u) / 256, in [0, 1)."""
    return (torch.round(x * 255.0) + u) / 256.0


def dequantize_fixed(x: Tensor, seed: int) -> Tensor:
    """One fixed dequantization of ``x`` (uniforms from a CPU generator seeded with ``seed``)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)
    return dequantize(x, u)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    cur = torch.cuda.current_device() if a.type == "cuda" else 0
    return (a.index if a.index is not None else cur) == (b.index if b.index is not None else cur)


class TensorBatches:
    """Iterate over ``(x_batch, index)``: ``x_batch`` ``(B, D)``, ``index`` ``(B,)`` int64.

    ``index`` holds the ids of the examples in the full ``x`` (for per-datapoint posteriors).

    Args:
        x: ``(N, D)`` floating tensor in ``[0, 1]``, already on the device to train on.
        batch_size: ``B``; the last batch is smaller unless ``drop_last``.
        shuffle: a new ``randperm`` order every epoch, else ``0..N-1``.
        binarize: ``"dynamic"``, ``"static"`` or ``"none"`` (see :class:`Binarize`).
        generator: drives the shuffling and the dynamic draws; it must live on ``x``'s device.
            The caller owns it, so its state can be checkpointed and an epoch replayed.
        drop_last: skip a final batch smaller than ``B``.
        dequantize: with ``binarize="none"``, serve (pixel + u) / 256, u ~ U[0, 1) fresh each
            time (x must then be grey levels pixel / 255). Without binarization or
            dequantization x may hold any real values (synthetic data).
        static_seed: the seed of the one draw made for ``binarize="static"``
            (through :func:`binarize_fixed`, so it does not touch ``generator``).
        shard: ``(rank, world)``: with world > 1 every rank orders the data alike (the same
            ``generator`` seed) and takes the rows ``rank::world`` of each global batch of
            ``B`` (so ``B`` must be divisible by world, and the last short batch is dropped).
        shard_examples: with world > 1, each rank instead keeps to its own examples, those whose
            id n has n % world == rank (per-datapoint tables sharded alike): it takes them in the
            common order, B / world at a time, for ``floor(N / world) // (B / world)`` batches
            on every rank (so the ranks step together).
        noise_generator: drives the dynamic binarization and the dequantization noise
            instead of ``generator`` (each rank its own); default: ``generator``.
    """

    def __init__(
        self,
        x: Tensor,
        batch_size: int,
        shuffle: bool,
        binarize: Binarize | str,
        generator: torch.Generator,
        drop_last: bool = False,
        static_seed: int = 0,
        dequantize: bool = False,
        shard: tuple[int, int] = (0, 1),
        noise_generator: torch.Generator | None = None,
        shard_examples: bool = False,
    ) -> None:
        if x.ndim != 2 or not x.is_floating_point():
            raise UsageError(
                f"TensorBatches expects a floating x of shape (N, D), "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        try:
            self.binarize = Binarize(binarize)
        except ValueError:
            choices = ", ".join(b.value for b in Binarize)
            raise UsageError(f"binarize={binarize!r}: expected one of {choices}") from None
        if dequantize and self.binarize is not Binarize.NONE:
            raise UsageError("dequantize needs binarize='none' (it acts on grey levels)")
        needs_unit = dequantize or self.binarize is not Binarize.NONE
        if needs_unit and x.numel() and (bool(x.min() < 0) or bool(x.max() > 1)):
            raise UsageError(
                f"TensorBatches expects x in [0, 1] to binarize or dequantize, got values in "
                f"[{float(x.min())}, {float(x.max())}]"
            )
        self.dequantize = dequantize
        if not _same_device(generator.device, x.device):
            raise UsageError(
                f"the generator lives on {generator.device} but x on {x.device}: "
                "create it with torch.Generator(device=x.device)"
            )
        rank, world = shard
        if not 0 <= rank < world or batch_size % world:
            raise UsageError(
                f"shard {shard}: expected rank in [0, world) and batch_size ({batch_size}) "
                "divisible by world"
            )
        self.shard = (rank, world)
        self.shard_examples = shard_examples and world > 1
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.noise_generator = noise_generator if noise_generator is not None else generator
        # with several ranks a short last batch could leave a rank without examples
        self.drop_last = drop_last or world > 1
        # a static binarization is held as booleans (a quarter of float32's memory), each batch
        # served in x's dtype
        self.dtype = x.dtype
        static = self.binarize is Binarize.STATIC
        self.x = binarize_fixed(x, static_seed, torch.bool) if static else x

    @property
    def num_examples(self) -> int:
        """``N``."""
        return self.x.shape[0]

    def __len__(self) -> int:
        """Batches per epoch: ``floor(N / B)`` with ``drop_last``, else ``ceil(N / B)``
        (with ``shard_examples``: ``floor(N / world) // (B / world)``)."""
        n, b = self.num_examples, self.batch_size
        if self.shard_examples:
            world = self.shard[1]
            return (n // world) // (b // world)
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, b, device = self.num_examples, self.batch_size, self.x.device
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=device)  # (N,)
        else:
            order = torch.arange(n, device=device)  # (N,)
        rank, world = self.shard
        noise = self.noise_generator
        if self.shard_examples:  # this rank's examples in the common order, B / world a batch
            order, b = order[order % world == rank], b // world
        for start in range(0, len(self) * b, b):
            index = order[start : start + b]  # (B,)
            if world > 1 and not self.shard_examples:
                index = index[rank::world]  # (B / world,): this rank's share
            x = self.x.index_select(0, index)  # (B, D); half the time of self.x[index]
            if x.dtype != self.dtype:  # a static binarization's booleans
                x = x.to(self.dtype)
            if self.binarize is Binarize.DYNAMIC:
                # b = 1[u < x], u ~ U(0, 1): b ~ Bernoulli(x), as binarize_fixed (on the CPU
                # faster than torch.bernoulli)
                u = torch.rand(x.shape, generator=noise, device=device, dtype=x.dtype)
                x = (u < x).to(x.dtype)  # (B, D) in {0, 1}
            elif self.dequantize:
                u = torch.rand(x.shape, generator=noise, device=device, dtype=x.dtype)
                x = dequantize(x, u)  # (B, D) in [0, 1)
            yield x, index
