r"""k-means: k-means++ seeding and Lloyd iterations, used to initialize the Gaussian mixture's EM.

k-means++: D. Arthur and S. Vassilvitskii, "k-means++: the advantages of careful seeding",
SODA 2007 (each new centre is a data point drawn with probability proportional to D(x)^2, its
squared distance to the nearest centre so far). Lloyd: S. P. Lloyd, "Least squares quantization
in PCM", IEEE Trans. Inf. Theory 28(2), 1982.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dgm.errors import DGMError


def chunks(x: torch.Tensor, size: int, dtype: torch.dtype) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, x[start:start + size] converted to dtype) over the rows of x."""
    for start in range(0, x.shape[0], size):
        yield start, x[start : start + size].to(dtype)


def _sq_dist_min(
    x: torch.Tensor, centres: torch.Tensor, chunk_size: int, exact: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """min_k ||x_n - c_k||^2 (N,) and its argmin (N,); x (N, D), centres (K, D) float64.

    ``exact`` takes differences, so duplicates are at distance exactly 0 (O(N K D) elementwise);
    otherwise |x|^2 - 2 x.c + |c|^2 by one matrix product, good enough for an argmin.
    """
    dist, labels = [], []
    c2 = centres.square().sum(-1)  # (K,)
    for _, xb in chunks(x, chunk_size, centres.dtype):
        if exact:
            d2 = torch.stack([(xb - c).square().sum(-1) for c in centres], -1)  # (B, K)
        else:
            d2 = (xb.square().sum(-1, keepdim=True) - 2 * xb @ centres.T + c2).clamp_min(0)
        m, a = d2.min(-1)
        dist.append(m)
        labels.append(a)
    return torch.cat(dist), torch.cat(labels)


def seed_centres(
    x: torch.Tensor, K: int, init: str, g: torch.Generator, chunk_size: int
) -> torch.Tensor:
    """K initial centres (K, D) in float64: k-means++ D^2 sampling, or (init="random") K data
    points drawn uniformly without replacement; ``g`` makes the draw reproducible.
    """
    N = x.shape[0]
    if init == "random":
        return x[torch.randperm(N, generator=g, device=x.device)[:K]].double()
    if init != "kmeans++":
        raise ValueError(f"init must be 'kmeans++' or 'random', got {init!r}")
    first = torch.randint(N, (1,), generator=g, device=x.device)
    centres = x[first].double()  # (1, D)
    d2, _ = _sq_dist_min(x, centres, chunk_size)  # (N,)
    for _ in range(1, K):
        if not d2.sum() > 0:
            raise DGMError(
                f"GMM: the data have fewer than {K} distinct points: use fewer components"
            )
        i = torch.multinomial(d2, 1, generator=g)  # P(n) proportional to D(x_n)^2
        centres = torch.cat([centres, x[i].double()])
        d2 = torch.minimum(d2, _sq_dist_min(x, centres[-1:], chunk_size)[0])
    return centres


def lloyd(x: torch.Tensor, centres: torch.Tensor, n_iter: int, chunk_size: int) -> torch.Tensor:
    """``n_iter`` Lloyd iterations from ``centres``; returns the final labels (N,).

    An empty cluster takes over the point farthest from its centre, so each label is used.
    """
    K = centres.shape[0]
    labels = None
    for _ in range(n_iter + 1):
        d2, new = _sq_dist_min(x, centres, chunk_size, exact=False)
        for k in range(K):
            if not (new == k).any():
                far = d2.argmax()
                new[far], d2[far] = k, 0.0
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=K).double()  # (K,)
        sums = torch.zeros_like(centres)  # (K, D)
        for start, xb in chunks(x, chunk_size, centres.dtype):
            sums.index_add_(0, labels[start : start + xb.shape[0]], xb)
        centres = sums / counts[:, None]
    return labels
