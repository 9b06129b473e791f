r"""The variance of gradient estimators, measured: the lecture's argument for the reparameterization
trick, as numbers.

For a fixed batch x and fixed parameters, each call of an estimator gives a random gradient
g in R^P of the batch-mean ELBO with respect to the chosen parameters (the encoder's, or the
per-datapoint tables'). Drawing R of them independently,

    variance       = tr Cov[g]  ~ sum_p  sample variance of g_p           (unbiased, 1/(R-1))
    mean_sq_norm   = ||E g||^2  ~ ||g_bar||^2 - variance / R              (debiased, clipped at 0)
    snr            = ||E g|| / sqrt(tr Cov[g])

Every unbiased estimator has the same E g, so ``mean_sq_norm`` is the same quantity for all of
them (up to noise) and the variances compare directly. (Rainforth et al. 2018 use the
per-parameter |E g_p| / std g_p; the aggregate here is one number per estimator.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

import dgm.registry as registry
from dgm.baselines import LeaveOneOut
from dgm.estep import frozen
from dgm.estimators import Estimator, Reparameterized, ScoreFunction, refusal
from dgm.objectives import IWAE, Bound


@dataclass
class GradientStats:
    variance: float  # trace of the covariance of one gradient estimate
    variance_se: float  # its Monte Carlo standard error (batch means over groups of draws)
    mean_sq_norm: float  # ||E g||^2, debiased
    snr: float  # ||E g|| / sqrt(variance)
    repeats: int
    seconds: float  # wall time of the R estimates

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _dense(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor:
    """A gradient as a dense tensor: zeros if unused, densified if sparse (local tables)."""
    if grad is None:
        return torch.zeros_like(param)
    return grad.to_dense() if grad.is_sparse else grad


def gradient_variance(
    estimator: Estimator,
    model: nn.Module,
    posterior: nn.Module,
    x: torch.Tensor,
    params: Sequence[torch.Tensor],
    repeats: int,
    index: torch.Tensor | None = None,
    groups: int = 10,
) -> GradientStats:
    r"""Draw ``repeats`` independent gradients of the batch-mean ELBO surrogate w.r.t. ``params``.

    The estimator is put in eval mode, so stateful baselines stay fixed across draws (warm them
    up first with :func:`warm_up_baseline`). The draws are split into ``groups`` consecutive
    groups, each accumulated in float64 with Welford's update (memory O(groups * P)); the
    groups' variances give the standard error of the variance (batch means), and they are
    pooled exactly (Chan et al. 1979) for the estimates.
    """
    if repeats < 2 * groups:
        raise ValueError(f"repeats must be >= 2 * groups = {2 * groups}, got {repeats}")
    params = list(params)
    was_training = estimator.training
    estimator.eval()
    sizes = [repeats // groups + (i < repeats % groups) for i in range(groups)]
    means, m2s = [], []
    start = time.perf_counter()
    for size in sizes:
        mean: torch.Tensor | None = None
        m2: torch.Tensor | None = None
        for r in range(1, size + 1):
            est = estimator(model, posterior(x, index), x)
            grads = torch.autograd.grad(est.surrogate.mean(), params, allow_unused=True)
            g = torch.cat(
                [_dense(gr, p).reshape(-1) for gr, p in zip(grads, params, strict=True)]
            ).double()  # (P,)
            if mean is None:
                mean, m2 = g.clone(), torch.zeros_like(g)
            else:
                delta = g - mean
                mean += delta / r
                m2 += delta * (g - mean)
        assert mean is not None and m2 is not None
        means.append(mean)
        m2s.append(m2)
    seconds = time.perf_counter() - start
    estimator.train(was_training)
    n = torch.tensor(sizes, dtype=torch.float64, device=means[0].device)  # (G,)
    mean_all = (torch.stack(means) * n[:, None]).sum(0) / repeats  # (P,)
    m2_all = sum(m2s) + sum(
        ni * (mi - mean_all) ** 2 for ni, mi in zip(n, means, strict=True)
    )  # pooled sum of squared deviations, (P,)
    variance = (m2_all.sum() / (repeats - 1)).item()
    group_var = torch.stack([m.sum() / (ni - 1) for m, ni in zip(m2s, n, strict=True)])  # (G,)
    variance_se = (group_var.std() / math.sqrt(groups)).item()
    mean_sq = max(0.0, (mean_all @ mean_all).item() - variance / repeats)
    snr = math.sqrt(mean_sq / variance) if variance > 0 else math.inf
    return GradientStats(variance, variance_se, mean_sq, snr, repeats, seconds)


def warm_up_baseline(
    estimator: Estimator,
    model: nn.Module,
    posterior: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Fit a control variate's state and parameters with the model and posterior frozen.

    A baseline is only as good as its fit to the current model: NVIL's network and the running
    mean are trained for ``steps`` batches (Adam on the baseline's regression loss) before its
    variance is measured. Baselines with nothing to fit (leave-one-out, none) return at once.
    """
    baseline = getattr(estimator, "baseline", None)
    if baseline is None or (not list(baseline.parameters()) and not list(baseline.buffers())):
        return
    params = list(baseline.parameters())
    optimizer = torch.optim.Adam(params, lr=lr) if params else None
    estimator.train()
    done = 0
    with frozen(model), frozen(posterior):
        while done < steps:
            for x, index in batches:
                est = estimator(model, posterior(x, index), x)
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    (-est.surrogate.mean()).backward()
                    optimizer.step()
                done += 1
                if on_step is not None:
                    on_step(done)
                if done >= steps:
                    break
    estimator.eval()


#: the control variates of ``score-baseline`` that are measured
BASELINES = ("running", "learned", "loo")


def measured_variants(provides: frozenset[str]) -> list[tuple[str, str | None, Bound]]:
    """(estimator, baseline, bound) for every registered estimator and every bound it can train
    with a posterior that ``provides`` these capabilities: first the ELBO's estimators, then the
    IWAE bound's, each group led by the pathwise gradient (the reference of its ratios)."""
    out: list[tuple[str, str | None, Bound]] = []
    for bound_name in ("elbo", "iwae"):
        for name, cls in registry.ESTIMATORS.items():
            kl = registry.resolve_kl(bound_name, "auto", name, provides)
            bound = registry.make_bound(bound_name, kl)
            if refusal(cls, bound, provides) is not None:
                continue
            for baseline in BASELINES if name == "score-baseline" else (None,):
                out.append((name, baseline, bound))
    return out


def _estimator(name: str, baseline: nn.Module | None, k: int, bound: Bound) -> Estimator:
    cls = registry.ESTIMATORS[name]
    if cls is ScoreFunction:
        return ScoreFunction(bound, k=k, baseline=baseline)
    return cls(k=k, bound=bound)


def compare_estimators(
    model: nn.Module,
    posterior: nn.Module,
    x: torch.Tensor,
    index: torch.Tensor,
    baselines: dict[str, nn.Module],
    ks: Sequence[int] = (1, 10, 100),
    repeats: int = 100,
    variants: Sequence[tuple[str, str | None, Bound]] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Gradient statistics for every variant (default: :func:`measured_variants` of the
    posterior) and K, w.r.t. ``posterior``'s parameters.

    ``baselines`` maps "running" and "learned" to warmed-up baseline modules (shared across K:
    what it regresses, the signal of one sample, does not depend on K). Leave-one-out is skipped
    at K = 1, where it does not exist. Each record has ``estimator``, ``baseline``, ``k``, the
    :class:`GradientStats` fields, ``variance_ratio_to_reparam`` and ``snr_common`` (the SNR
    with the pathwise estimate of ||E g||^2, at the same K; the first variant must be reparam).
    Estimators of the IWAE bound's gradient get ``variance_ratio_to_iwae``, against the pathwise
    one of the same bound.
    """
    if variants is None:
        variants = measured_variants(getattr(posterior, "provides", frozenset({"rsample"})))
    params = [p for p in posterior.parameters() if p.requires_grad]
    records: list[dict[str, Any]] = []
    for k in ks:
        reparam_var: float | None = None
        reparam_mean_sq = 0.0
        iwae_var = 0.0
        for estimator_name, baseline_name, bound in variants:
            if k < registry.ESTIMATORS[estimator_name].min_k or (baseline_name == "loo" and k < 2):
                continue
            if baseline_name == "loo":
                baseline: nn.Module | None = LeaveOneOut()
            else:
                baseline = baselines[baseline_name] if baseline_name else None
            est = _estimator(estimator_name, baseline, k, bound)
            with frozen(model):
                stats = gradient_variance(est, model, posterior, x, params, repeats, index)
            iwae_bound = isinstance(bound, IWAE)
            pathwise = registry.ESTIMATORS[estimator_name] is Reparameterized
            if pathwise and not iwae_bound:
                reparam_var, reparam_mean_sq = stats.variance, stats.mean_sq_norm
            record = {"estimator": estimator_name, "baseline": baseline_name, "k": k}
            record["bound"] = bound.name
            record.update(stats.to_dict())
            record["variance_ratio_to_reparam"] = (
                stats.variance / reparam_var if reparam_var else None
            )
            # every unbiased estimator has the same E g; the pathwise estimate of ||E g||^2 is
            # the most precise, so this SNR stays meaningful where R draws of a noisy estimator
            # cannot resolve its own mean (its debiased ||E g||^2 is then clipped to 0)
            record["snr_common"] = (
                math.sqrt(reparam_mean_sq / stats.variance)
                if reparam_var is not None and stats.variance > 0
                else None
            )
            if pathwise and iwae_bound:
                iwae_var = stats.variance
            if iwae_bound:  # another gradient: compare with the IWAE bound's pathwise one
                record["variance_ratio_to_iwae"] = stats.variance / iwae_var if iwae_var else None
                record["snr_common"] = None  # its own mean, ``snr``, is the one to read
            records.append(record)
            if on_record is not None:
                on_record(record)
    return records
