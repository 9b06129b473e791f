"""Pictures: image grids (Pillow) and figures (matplotlib). No plotting elsewhere.

Figures are :class:`matplotlib.figure.Figure` objects made directly, never through pyplot: dgm
neither switches the user's backend nor leaves figures open in pyplot's global state.

matplotlib is imported by the first figure, not with dgm (``import dgm`` stays light)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any) -> Any:
    """A new figure and its axes, as ``pyplot.subplots`` returns them, without pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def image_grid(
    images: torch.Tensor | np.ndarray,
    image_shape: tuple[int, int] = (28, 28),
    nrow: int | None = None,
    padding: int = 2,
    scale: int = 2,
) -> Image.Image:
    """Tile (N, H*W) or (N, H, W) values in [0, 1] into a grey image, ``nrow`` images per row."""
    a = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else images
    a = np.clip(np.asarray(a, dtype=np.float32).reshape(-1, *image_shape), 0.0, 1.0)  # (N, H, W)
    n, h, w = a.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = np.ones((ncol * (h + padding) + padding, nrow * (w + padding) + padding), np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = a[i]
    img = Image.fromarray((grid * 255).round().astype(np.uint8), mode="L")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_image(img: Image.Image, path: Path) -> None:
    from dgm.files import atomic_write_bytes  # here: dgm.train imports this module

    atomic_write_bytes(Path(path), _png_bytes(img))


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (120 dpi, cropped to its contents)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: Path) -> None:
    from dgm.files import atomic_write_bytes  # here: dgm.train imports this module

    atomic_write_bytes(Path(path), figure_png(fig))


def save_grid(images: torch.Tensor, path: Path, image_shape: tuple[int, int] = (28, 28)) -> None:
    save_image(image_grid(images, image_shape), path)


def reconstruction_grid(
    x: torch.Tensor, x_rec: torch.Tensor, image_shape: tuple[int, int] = (28, 28)
) -> Image.Image:
    """Rows of test images (B, D), each over the row of their reconstructions (``nrow`` = 8;
    the first B - B % 8 images)."""
    n = x.shape[0] - x.shape[0] % 8
    x, x_rec = x[:n].reshape(-1, 8, x.shape[-1]), x_rec[:n].reshape(-1, 8, x.shape[-1])
    interleaved = torch.stack([x, x_rec], 1).reshape(-1, x.shape[-1])  # (2n, D)
    return image_grid(interleaved, image_shape, nrow=8)


def save_reconstructions(
    x: torch.Tensor, x_rec: torch.Tensor, path: Path, image_shape: tuple[int, int] = (28, 28)
) -> None:
    """:func:`reconstruction_grid` as a PNG file."""
    save_image(reconstruction_grid(x, x_rec, image_shape), path)


def save_side_by_side(
    panels: Sequence[tuple[str, torch.Tensor]], path: Path, image_shape: tuple[int, int] = (28, 28)
) -> None:
    """Grids next to each other under titles, as the lecture's "Performance" slide."""
    fig, axes = subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for ax, (title, images) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(
            np.asarray(image_grid(images, image_shape, scale=1)), cmap="gray", vmin=0, vmax=255
        )
        ax.set_title(title)
        ax.axis("off")
    save_figure(fig, path)


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    kept = [r for r in rows if isinstance(r.get(key), int | float)]
    return [r["epoch"] for r in kept], [r[key] for r in kept]


#: the VAE's panels: the bound, train and test, and the KL
VAE_CURVES = (
    ("nats per example", ("train_elbo", "test_elbo", "train_iwae", "test_iwae")),
    ("KL(q || p), nats", ("train_kl", "test_kl")),
)


#: curves with at most this many points have a marker on each
CURVE_MARKERS = 50


def save_curves(
    rows: list[dict],
    path: Path,
    panels: Sequence[tuple[str, Sequence[str]]] | None = None,
) -> None:
    """Training curves from a run's metrics rows (``metrics.jsonl``): one panel per
    (y label, metric names) of ``panels`` (default: :data:`VAE_CURVES`; the AE's
    reconstruction when it has no bound), each metric the first row has as a line."""
    fig = curves_figure(rows, panels)
    if fig is not None:
        save_figure(fig, path)


def curves_figure(
    rows: list[dict], panels: Sequence[tuple[str, Sequence[str]]] | None = None
) -> Figure | None:
    """The figure of :func:`save_curves`, or None when no row has an epoch."""
    rows = [r for r in rows if "epoch" in r]
    if not rows:
        return None
    panels = list(panels or VAE_CURVES)
    if panels[0][1] == VAE_CURVES[0][1] and not any(k in rows[0] for k in panels[0][1]):
        panels[0] = ("nats per example", ("train_recon", "test_recon"))
    panels = [(label, [k for k in keys if k in rows[0]]) for label, keys in panels]
    panels = [(label, keys) for label, keys in panels if keys] or [("", [])]
    fig, axes = subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (label, keys) in zip(np.atleast_1d(axes), panels, strict=True):
        for k in keys:  # a row without a key (a metric added on resume) is left out of its line
            xs, ys = _series(rows, k)
            # a marker on each epoch: a run of one epoch is one point, which a line never shows
            ax.plot(xs, ys, label=k, marker="o" if len(xs) <= CURVE_MARKERS else None, ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if keys:
            ax.legend()
        ax.grid(alpha=0.3)
    return fig


def save_gradvar(records: list[dict], path: Path, title: str = "") -> None:
    """Gradient variance (trace of the covariance) against K, one line per estimator, log-log."""
    fig, axes = subplots(1, 2, figsize=(11, 4.2))
    names = []
    for r in records:
        name = r["estimator"] + (f" + {r['baseline']}" if r.get("baseline") else "")
        if name not in names:
            names.append(name)
    for name in names:
        rows = [
            r
            for r in records
            if r["estimator"] + (f" + {r['baseline']}" if r.get("baseline") else "") == name
        ]
        ks = [r["k"] for r in rows]
        axes[0].plot(ks, [r["variance"] for r in rows], "o-", label=name)
        snr = [r.get("snr_common") or r["snr"] for r in rows]
        axes[1].plot(ks, snr, "o-", label=name)
    axes[0].set_ylabel("tr Cov[gradient]  (variance)")
    axes[1].set_ylabel("signal-to-noise  ||E g|| / sqrt(tr Cov g)\n(E g from the pathwise draws)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (samples of z per example)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_gap(r: dict, path: Path) -> None:
    """The three levels of ``dgm gap`` as bars: log p(x), optimized ELBO, encoder's ELBO."""
    fig, ax = subplots(figsize=(6, 3.2))
    levels = [
        ("log p(x)", r["log_likelihood"]),
        ("ELBO, optimized q", r["elbo_optimized"]),
        ("ELBO, encoder q", r["elbo_amortized"]),
    ]
    ax.barh([n for n, _ in levels], [v for _, v in levels], color=["C2", "C0", "C1"])
    lo = min(v for _, v in levels) - 2
    ax.set_xlim(lo, max(v for _, v in levels) + 1)
    ax.set_xlabel("nats per test example")
    ax.set_title(
        f"approximation gap {r['approximation_gap']:.2f}, "
        f"amortization gap {r['amortization_gap']:.2f} nats"
    )
    ax.invert_yaxis()
    save_figure(fig, path)


def save_score(
    samples: torch.Tensor,
    nearest: torch.Tensor,
    histograms: Sequence[tuple[str, Sequence[float]]],
    path: Path,
    image_shape: tuple[int, int] = (28, 28),
) -> None:
    """Left: rows of samples, each over the row of their nearest training images (``nrow`` = 8);
    right: the predicted-label histograms (say the model's and the real images')."""
    pairs = np.asarray(image_grid_pairs(samples, nearest, image_shape), dtype=np.float32)
    fig, (left, right) = subplots(1, 2, figsize=(9, 4.3), gridspec_kw={"width_ratios": [1.1, 1]})
    left.imshow(pairs, cmap="gray", vmin=0, vmax=255)
    left.set_title("samples, each over its nearest training image")
    left.axis("off")
    width = 0.8 / len(histograms)
    for i, (label, h) in enumerate(histograms):
        right.bar(
            np.arange(len(h)) + (i - (len(histograms) - 1) / 2) * width, h, width, label=label
        )
    right.set_xticks(range(10))
    right.set_xlabel("label predicted by the feature network")
    right.set_ylabel("fraction")
    right.legend()
    save_figure(fig, path)


def image_grid_pairs(
    samples: torch.Tensor, nearest: torch.Tensor, image_shape: tuple[int, int] = (28, 28)
) -> Image.Image:
    """Rows of 8 ``samples``, each row over the row of the matching ``nearest`` images."""
    n = samples.shape[0] - samples.shape[0] % 8 or samples.shape[0]
    d = samples.shape[-1]
    a, b = samples[:n].reshape(-1, min(8, n), d), nearest[:n].reshape(-1, min(8, n), d)
    return image_grid(torch.stack([a, b], 1).reshape(-1, d), image_shape, nrow=min(8, n), scale=1)


def save_progress(
    images: torch.Tensor, epochs: Sequence[int], path: Path, image_shape: tuple[int, int] = (28, 28)
) -> None:
    """One row of samples per epoch (``images`` (E, n, D), the same latent vectors in every
    row), labelled by epoch: a whole run in one picture. At most 20 rows, evenly spaced, the
    last one kept."""
    e = images.shape[0]
    keep = sorted({round(i * (e - 1) / 19) for i in range(20)}) if e > 20 else list(range(e))
    images, epochs = images[keep], [epochs[i] for i in keep]
    n = images.shape[1]
    grid = image_grid(images.reshape(-1, images.shape[-1]), image_shape, nrow=n, scale=1)
    h = image_shape[0] + 2
    fig, ax = subplots(figsize=(1 + 0.5 * n, 0.6 + 0.5 * len(keep)))
    ax.imshow(np.asarray(grid), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks(
        [2 + h * i + image_shape[0] / 2 for i in range(len(keep))], [str(x) for x in epochs]
    )
    ax.set_xticks([])
    ax.set_ylabel("epoch")
    ax.set_title("the same z, epoch by epoch")
    save_figure(fig, path)


def save_latent(
    path: Path,
    *,
    coords: torch.Tensor,
    labels: torch.Tensor | None,
    axes: tuple[str, str],
    interpolations: torch.Tensor,
    traversals: torch.Tensor,
    rows: Sequence[str],
    columns: Sequence[str],
    traversal_title: str,
    pair_rows: Sequence[str] | None = None,
    image_shape: tuple[int, int] = (28, 28),
) -> None:
    """The latent view of :mod:`dgm.latent` in one figure: left, the test means ``coords``
    (N, 2) coloured by ``labels`` (N,); right, the ``interpolations`` (P, S, D), one pair per
    row, over the ``traversals`` (U, Q, D), one unit per row (named by ``rows``) and one
    quantile per column (``columns``); ``pair_rows`` names the pairs."""
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    p, s, d = interpolations.shape
    u, q, _ = traversals.shape
    h, w = image_shape
    fig = Figure(figsize=(13, 6.5))
    grid = GridSpec(2, 2, figure=fig, width_ratios=[1, 1.15], height_ratios=[p, u], wspace=0.25)
    plane = fig.add_subplot(grid[:, 0])
    xy = coords.detach().double().cpu().numpy()
    if labels is None:
        plane.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.6, color="C0", linewidths=0)
    else:
        lab = labels.detach().cpu().numpy()
        for k in np.unique(lab):
            at = lab == k
            color = f"C{int(k) % 10}"
            plane.scatter(xy[at, 0], xy[at, 1], s=3, alpha=0.6, color=color, label=str(k))
        plane.legend(title="label", markerscale=4, fontsize=8, loc="best")
    plane.set_xlabel(axes[0])
    plane.set_ylabel(axes[1])
    plane.set_title(f"E_q[z | x] of {xy.shape[0]} test images")
    plane.grid(alpha=0.3)

    def panel(where: Any, images: torch.Tensor, nrow: int) -> Any:  # a grid of images as axes
        ax = fig.add_subplot(where)
        grid_image = image_grid(images.reshape(-1, d), image_shape, nrow=nrow, scale=1)
        ax.imshow(np.asarray(grid_image), cmap="gray", vmin=0, vmax=255)
        return ax

    top = panel(grid[0, 1], interpolations, s)
    top.set_xticks([2 + (w + 2) * j + w / 2 for j in (0, s - 1)], ["x_a", "x_b"])
    if pair_rows:
        top.set_yticks([2 + (h + 2) * i + h / 2 for i in range(p)], list(pair_rows), fontsize=8)
    else:
        top.set_yticks([])
    top.set_title("decoder means along (1 - t) m(x_a) + t m(x_b)")
    bottom = panel(grid[1, 1], traversals, q)
    bottom.set_yticks([2 + (h + 2) * i + h / 2 for i in range(u)], list(rows), fontsize=8)
    bottom.set_xticks([2 + (w + 2) * j + w / 2 for j in range(q)], list(columns), fontsize=7)
    bottom.set_xlabel("quantile")
    bottom.set_title(traversal_title, fontsize=10)
    save_figure(fig, path)
