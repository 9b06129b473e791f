r"""The latent space of a run with an encoder: where q puts the test images, and what p decodes.

Three views of z_1 (the layer the decoder reads), all from the test means m(x) = E_q[z_1 | x]:

- the **plane**: m(x) coloured by digit label, the latent plane itself when d = 2, else its
  projection onto the top two principal axes of the means' covariance
  C = (1/N) sum_n (m_n - mbar)(m_n - mbar)^T, each axis with its share lambda_k / tr C;
- **interpolations**: the mean of p(x | z) along z_t = (1 - t) m(x_a) + t m(x_b), t in [0, 1],
  between pairs of test images (t = 0 and 1 are their reconstructions);
- **traversals** of the most active units (Burda et al. 2015, section 5.2: ranked by
  A_u = Var_x E_q[z_u | x]): one unit set to quantiles of the prior's marginal p(z_u), the
  others at a test image's mean (for the autoencoder, whose codes follow no prior, the
  quantiles of the test codes).

>>> view = latent_view(dgm.load_run("runs/first"))            # doctest: +SKIP
>>> view.coords.shape, view.axes                              # doctest: +SKIP
(torch.Size([10000, 2]), ('PC1 (23.1% of variance)', 'PC2 (15.4% of variance)'))

Runs without an encoder (the families of :mod:`dgm.families`, PPCA and the GMM, per-datapoint
tables) are refused in one line by :func:`refusal`, read from the configuration alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from dgm.config import Config
from dgm.data.arrays import Data
from dgm.errors import UsageError
from dgm.evaluate import posterior_mean
from dgm.models.prior import StandardNormalPrior

LATENT = "latent.png"
#: the prior's quantiles a traversal sets its unit to (the median in the middle)
QUANTILES = (0.02, 0.05, 0.15, 0.3, 0.5, 0.7, 0.85, 0.95, 0.98)
#: draws from a prior without closed-form marginals (several layers) for its quantiles
PRIOR_DRAWS = 20000

_NO_ENCODER = {
    "gan": "its generator maps z to x and nothing maps x back to z",
    "diffusion": "its latents x_1..x_T are noised images, fixed by the schedule, not encoded",
    "rbm": "its hidden units are binary with an exact p(h | x), not a learned encoder",
    "ebm": "an energy-based model has no latent variables",
    "ppca": "its posterior p(z | x) is exact (linear Gaussian), not a learned encoder",
    "gmm": "its latent is a discrete component with an exact posterior, not a learned encoder",
}


class HasEncoder(Protocol):
    """What the views read: a :class:`dgm.runs.Run` (or the trainer at the end of training)."""

    config: Config
    model: nn.Module
    posterior: nn.Module | None
    data: Data


@dataclass
class LatentView:
    """The three views (see the module doc); tensors on the CPU, coordinates in float64.

    Shapes: ``means`` (N, d), ``coords`` (N, 2), ``labels`` (N,) or None, ``activity`` (d,),
    ``components`` (2, d) (None in the plane itself), ``explained`` (2,) or None,
    ``pairs`` (P, 2) test indices, ``interpolations`` (P, S, D), ``units`` (U,) most active
    first, ``values`` (Q, U) the traversed values, ``traversals`` (U, Q, D).
    """

    means: torch.Tensor
    coords: torch.Tensor
    labels: torch.Tensor | None
    axes: tuple[str, str]
    activity: torch.Tensor
    components: torch.Tensor | None
    explained: torch.Tensor | None
    pairs: torch.Tensor
    t: torch.Tensor
    interpolations: torch.Tensor
    base: int
    units: torch.Tensor
    quantiles: torch.Tensor
    values: torch.Tensor
    traversals: torch.Tensor
    #: "prior" (the prior's marginal quantiles) or "codes" (the test codes', an autoencoder)
    quantile_source: str

    def summary(self) -> dict[str, Any]:
        """The numbers behind the figure, for JSON."""
        explained = None if self.explained is None else [float(e) for e in self.explained]
        return {
            "examples": int(self.means.shape[0]),
            "latent_dim": int(self.means.shape[1]),
            "axes": list(self.axes),
            "explained_variance": explained,
            "units": [int(u) for u in self.units],
            "activity": [float(a) for a in self.activity],
            "pairs": self.pairs.tolist(),
            "base": self.base,
            "quantiles": [float(q) for q in self.quantiles],
            "quantile_source": self.quantile_source,
        }


def refusal(config: Config) -> str | None:
    """Why a run of ``config`` has no latent view (no encoder q(z | x)), or None."""
    kind = config.model.kind
    if kind in _NO_ENCODER:
        return f"a '{kind}' run has no encoder q(z | x): {_NO_ENCODER[kind]}"
    if config.inference.kind == "local":
        return (
            f"a '{kind}' run with inference.kind = 'local' has per-datapoint tables q_n, no "
            "encoder that maps a test image to its q(z | x)"
        )
    return None


def require_encoder(run: HasEncoder, what: str = "a latent view") -> None:
    """One UsageError line naming the run's kind when it has no encoder."""
    reason = refusal(run.config)
    if reason is not None:
        where = getattr(run, "path", None)
        raise UsageError(f"{where}: {reason}; {what} needs one" if where else f"{reason}")


@contextlib.contextmanager
def _own_rng(device: torch.device, seed: int) -> Iterator[None]:
    """The global RNG seeded for the block, then restored: no one else's draws change."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.inference_mode()
def posterior_means(
    run: HasEncoder, x: torch.Tensor, batch_size: int = 1000, samples: int = 100
) -> torch.Tensor:
    """E_q[z_1 | x] of the images x (N, D) -> (N, d_1) float64, in batches (a Monte Carlo
    average of ``samples`` draws where q has no closed-form mean: flows)."""
    posterior = run.posterior.eval()
    bottom = getattr(run.model, "bottom_dim", run.config.model.latent_dim)
    parts = []
    for start in range(0, x.shape[0], batch_size):
        x_b = x[start : start + batch_size]
        index = torch.arange(start, start + x_b.shape[0], device=x.device)
        parts.append(posterior_mean(posterior(x_b, index), samples)[:, :bottom].double())
    return torch.cat(parts)  # (N, d_1)


def principal_plane(means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The projection of ``means`` (N, d), d >= 2, onto the top two eigenvectors of their
    covariance C: the coordinates (N, 2) of m_n - mbar, the eigenvectors (2, d) (each signed so
    its largest entry is positive) and the explained fractions lambda_k / tr C (2,)."""
    m = means.double()
    centred = m - m.mean(0)  # (N, d)
    cov = centred.T @ centred / m.shape[0]  # (d, d)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    top = eigenvectors[:, [-1, -2]].T  # (2, d)
    flip = top.gather(1, top.abs().argmax(1, keepdim=True)).sign()  # (2, 1)
    top = top * torch.where(flip == 0, 1.0, flip)
    total = eigenvalues.clamp_min(0).sum()
    explained = eigenvalues[[-1, -2]].clamp_min(0) / total if total > 0 else torch.zeros(2)
    return centred @ top.T, top, explained.double()


def _plane(
    means: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, tuple[str, str], torch.Tensor | None, torch.Tensor | None]:
    d = means.shape[1]
    if d == 1:  # a line: the code against the label (or 0)
        y = labels.double() if labels is not None else torch.zeros(means.shape[0])
        return torch.stack([means[:, 0], y], 1), ("z1", "digit label"), None, None
    if d == 2:
        return means.clone(), ("z1", "z2"), None, None
    coords, components, explained = principal_plane(means)
    axes = tuple(f"PC{k + 1} ({100 * float(e):.1f}% of variance)" for k, e in enumerate(explained))
    return coords, axes, components, explained  # type: ignore[return-value]


@torch.inference_mode()
def decode_means(run: HasEncoder, z: torch.Tensor) -> torch.Tensor:
    """The mean of p(x | z) for codes z (..., d_1) -> (..., D), as images in [0, 1]."""
    model = run.model.eval()
    param = next(model.parameters())
    return model.likelihood(z.to(param)).mean.float().clamp(0, 1)


def interpolate(
    run: HasEncoder, m_a: torch.Tensor, m_b: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    r"""Decoder means along z_t = (1 - t) m_a + t m_b: means (P, d) and t (S,) -> (P, S, D)."""
    t = t.to(m_a).reshape(1, -1, 1)  # (1, S, 1)
    z = (1 - t) * m_a[:, None, :] + t * m_b[:, None, :]  # (P, S, d)
    return decode_means(run, z)


def traverse(
    run: HasEncoder, base: torch.Tensor, units: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Decoder means with unit ``units[j]`` of the code ``base`` (d,) set to ``values[:, j]``
    (Q, U), the others kept: (U, Q, D)."""
    u, q = units.numel(), values.shape[0]
    z = base.reshape(1, 1, -1).repeat(u, q, 1)  # (U, Q, d)
    for j, unit in enumerate(units.tolist()):
        z[j, :, unit] = values[:, j].to(z)
    return decode_means(run, z)


def prior_quantiles(run: HasEncoder, probs: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Quantiles ``probs`` (Q,) of the prior's marginals p(z_u) of ``units`` (U,): (Q, U), in
    closed form for N(0, I), else from :data:`PRIOR_DRAWS` draws (several stochastic layers)."""
    p_z = run.model.p_z
    if isinstance(p_z, StandardNormalPrior):
        normal = torch.distributions.Normal(p_z.loc[units].double(), p_z.scale[units].double())
        return normal.icdf(probs.double().to(p_z.loc.device)[:, None]).cpu()  # (Q, U)
    with torch.inference_mode():
        z = run.model.prior().sample((PRIOR_DRAWS,))[:, units].double()  # (S, U)
    return torch.quantile(z, probs.double().to(z.device), dim=0).cpu()  # (Q, U)


def latent_view(
    run: HasEncoder,
    *,
    limit: int | None = None,
    pairs: int = 4,
    steps: int = 10,
    units: int = 4,
    quantiles: tuple[float, ...] = QUANTILES,
    seed: int = 0,
) -> LatentView:
    """The three views of the run's test set (its first ``limit`` images): the plane,
    ``pairs`` interpolations of ``steps`` images each, and traversals of the ``units`` most
    active units over ``quantiles``. Pairs and the traversal's base image are drawn with
    ``seed``; the global RNG is left as it was."""
    require_encoder(run)
    for name, value in (("pairs", pairs), ("steps", steps), ("units", units)):
        if not (isinstance(value, int) and value >= (2 if name == "steps" else 1)):
            raise UsageError(f"latent view: {name} = {value}; expected a positive count")
    if limit is not None and limit < 1:
        raise UsageError(f"latent view: limit = {limit}; expected a positive number of images")
    if not quantiles or not all(0 < q < 1 for q in quantiles):
        raise UsageError(f"latent view: quantiles {quantiles}; expected values in (0, 1)")
    x = run.data.x_test[:limit]
    labels = run.data.test_labels
    labels = None if labels is None else labels[:limit].cpu()
    n = x.shape[0]
    if n < 2:
        raise UsageError(f"latent view: {n} test image(s); expected at least 2")
    with _own_rng(x.device, seed):
        means = posterior_means(run, x, run.config.train.eval_batch_size).cpu()  # (N, d)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        p = min(pairs, n // 2)
        pair_index = order[: 2 * p].reshape(p, 2)  # (P, 2)
        t = torch.linspace(0, 1, steps, dtype=torch.float64)
        interpolations = interpolate(run, means[pair_index[:, 0]], means[pair_index[:, 1]], t)
        activity = means.var(0, correction=0)  # (d,)  A_u = Var_x E_q[z_u | x]
        top = activity.argsort(descending=True, stable=True)[: min(units, means.shape[1])]
        probs = torch.tensor(quantiles, dtype=torch.float64)
        codes = "density" not in getattr(run.posterior, "provides", frozenset({"density"}))
        if codes:  # an autoencoder: its codes follow no prior
            values = torch.quantile(means[:, top], probs, dim=0)  # (Q, U)
        else:
            values = prior_quantiles(run, probs, top.to(x.device))
        base = int(order[0])
        traversals = traverse(run, means[base], top, values)
    coords, axes, components, explained = _plane(means, labels)
    return LatentView(
        means=means,
        coords=coords,
        labels=labels,
        axes=axes,
        activity=activity,
        components=components,
        explained=explained,
        pairs=pair_index,
        t=t,
        interpolations=interpolations.cpu(),
        base=base,
        units=top,
        quantiles=probs,
        values=values,
        traversals=traversals.cpu(),
        quantile_source="codes" if codes else "prior",
    )


def save_view(view: LatentView, path: Path, image_shape: tuple[int, int] = (28, 28)) -> None:
    """The figure of the three views, written atomically to ``path`` (a PNG)."""
    from dgm.plots import save_latent

    kind = "prior" if view.quantile_source == "prior" else "test codes"
    pair_rows = None
    if view.labels is not None:
        pair_rows = [f"{int(view.labels[a])} to {int(view.labels[b])}" for a, b in view.pairs]
    save_latent(
        path,
        coords=view.coords,
        labels=view.labels,
        axes=view.axes,
        interpolations=view.interpolations,
        traversals=view.traversals,
        rows=[f"z{int(u) + 1}  (A = {float(view.activity[u]):.3g})" for u in view.units],
        columns=[f"{float(q):.2f}" for q in view.quantiles],
        traversal_title=f"traversals at quantiles of the {kind}, others at a test mean",
        pair_rows=pair_rows,
        image_shape=image_shape,
    )


def write_view(
    run: HasEncoder, run_dir: Path, out: Path | None = None, **options: Any
) -> tuple[Path, LatentView]:
    """Compute the view (``options``: :func:`latent_view`'s), write it to ``out`` (default
    ``run_dir/latent.png``) and record it in the run's manifest when it is inside the run."""
    import dgm.manifest as manifest

    view = latent_view(run, **options)
    path = Path(out) if out is not None else Path(run_dir) / LATENT
    save_view(view, path, run.data.image_shape)
    manifest.record(run_dir, path)
    return path, view
