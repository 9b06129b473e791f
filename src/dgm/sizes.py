r"""The memory a configuration needs, estimated before anything is built, and the refusal of a run
that cannot fit.

From the configuration alone (and the data's shape) this counts the parameters of every network
the config describes: encoder, decoder, flow steps, the conditionals of upper stochastic layers,
the NVIL baseline and per-datapoint tables (exactly: tests compare the counts with built
models), and the floats a step keeps for its backward pass (batch x K x every width), the
largest evaluation pass (eval batch x K), the data and a checkpoint's copies. In bytes:

    params x 4 x (1 + gradient + Adam's 2 moments) + tables x 4 x 3 (SparseAdam)
    + data + max(a step's activations, an evaluation pass, a checkpoint's copies)

:func:`check` compares that with what the machine has (``MemAvailable``, or psutil; the free
memory of a CUDA device; a cgroup's limit) and ``train.max_memory``, and refuses in one line
that names the figure and the config keys behind its largest part. The estimate is an honest
one, not a bound: it is there to refuse a run that would swap or be killed, before it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dgm.config import CLASSICAL, Config, parse_posterior, parse_size
from dgm.counts import (
    FLOAT,
    Part,
    activations,
    inference_floats,
    latent_sizes,
    networks,
    training_floats,
)
from dgm.errors import MemoryLimitError, shorten

#: the data sets dgm knows have 60,000 training and 10,000 test images of 28 x 28
DEFAULT_SHAPE = (60_000, 10_000, 784)


@dataclass
class Need:
    """Estimated bytes by what they hold; ``total`` is what :func:`check` compares."""

    items: list[tuple[str, str, int]] = field(default_factory=list)  # (what, keys, bytes)

    def add(self, what: str, keys: str, nbytes: int) -> None:
        if nbytes > 0:
            self.items.append((what, keys, int(nbytes)))

    @property
    def total(self) -> int:
        return sum(b for _, _, b in self.items)

    def largest(self) -> tuple[str, str, int]:
        return max(self.items, key=lambda item: item[2])


# -- what a run needs --------------------------------------------------------------------------


def data_shape(config: Config, data: object | None = None) -> tuple[int, int, int]:
    """(training examples, test examples, pixels) of the run's data: of ``data`` (a
    :class:`dgm.data.Data`) when given, else of the config's data set and limits."""
    if data is not None:
        n, dim = data.x_train.shape  # type: ignore[attr-defined]
        return int(n), int(data.x_test.shape[0]), int(dim)  # type: ignore[attr-defined]
    n, m, dim = DEFAULT_SHAPE
    dc = config.data
    return min(n, dc.train_limit or n), min(m, dc.test_limit or m), dim


def _classical(config: Config, n: int, m: int, dim: int) -> Need:
    """PPCA and the GMM, fitted by EM in float64 (``dgm.train.classical``)."""
    mc, need = config.model, Need()
    need.add("the data in float64", "data.train_limit", 8 * (n + m) * dim + 5 * (n + m) * dim)
    if mc.kind == "ppca":
        need.add("covariance and eigenvectors", "model.latent_dim", 8 * 4 * dim * dim)
        need.add("loadings", "model.latent_dim", 8 * 3 * dim * mc.latent_dim)
        return need
    cov = dim * dim if mc.covariance == "full" else dim
    need.add(
        f"{mc.components} covariances ({mc.covariance})",
        "model.components, model.covariance",
        8 * 3 * mc.components * cov,
    )
    need.add("responsibilities", "model.components", 8 * 3 * n * mc.components)
    return need


def _parameters(need: Need, parts: list[Part], per: int, per_table: int, what: str) -> None:
    for p in parts:
        n = per_table if p.table else per
        need.add(f"the {p.name} ({p.parameters:,} parameters{what})", p.keys, n * p.parameters)
        need.add(f"the {p.name}'s buffers", p.keys, p.buffer_bytes)


def training(config: Config, data: object | None = None) -> Need:
    """What training ``config`` needs on its device (on data of ``data``'s shape, if given):
    the parameters with their gradients and Adam's moments (a table: SparseAdam's), the data,
    and the largest of a training step's activations, the evaluation after every epoch, and a
    checkpoint's copies of the parameters and moments."""
    n, m, dim = data_shape(config, data)
    if config.model.kind in CLASSICAL:
        return _classical(config, n, m, dim)
    need = Need()
    need.add("the data", "data.train_limit, data.test_limit", (FLOAT + 1) * (n + m) * dim)
    parts = networks(config, dim, n)
    tc, k = config.train, config.objective.k
    step, busiest = training_floats(activations(config, dim, min(tc.batch_size, n), k))
    test, widest = inference_floats(activations(config, dim, min(tc.eval_batch_size, max(m, 1)), k))
    if config.inference.kind == "local":  # the test set's tables, fitted by Adam each epoch
        test += 4 * 2 * m * config.model.latent_dim
    copies = 3 * sum(p.parameters for p in parts)  # a checkpoint: values and Adam's moments
    if copies >= max(step, test):  # the peak is while a checkpoint is written
        what = " with gradients, Adam's moments and a checkpoint's copy"
        _parameters(need, parts, FLOAT * 7, FLOAT * 6, what)
        return need
    _parameters(need, parts, FLOAT * 4, FLOAT * 3, " with gradients and Adam's moments")
    if step >= test:
        keys = f"train.batch_size x objective.k x {busiest.keys}"
        need.add(f"a training step's activations, mostly the {busiest.name}'s", keys, FLOAT * step)
    else:
        keys = f"train.eval_batch_size x objective.k x {widest.keys}"
        need.add(f"the evaluation after each epoch, mostly the {widest.name}", keys, FLOAT * test)
    return need


def loading(config: Config, data: object | None = None) -> Need:
    """What a loaded run holds before it computes anything: its weights (no gradient, no
    optimizer) and its data."""
    n, m, dim = data_shape(config, data)
    if config.model.kind in CLASSICAL:
        return _classical(config, n, m, dim)
    need = Need()
    need.add("the data", "data.train_limit, data.test_limit", (FLOAT + 1) * (n + m) * dim)
    _parameters(need, networks(config, dim, n), FLOAT, FLOAT, "")
    return need


def evaluation(
    config: Config, k: int, pairs_per_pass: int, batch_size: int = 100, data: object | None = None
) -> Need:
    """What importance sampling with ``k`` samples needs (:mod:`dgm.evaluate`): the weights,
    the data, and the larger of one pass of at most ``pairs_per_pass`` (sample, example) pairs
    (k is split in chunks: it raises the time, not the memory) and the active units' pass."""
    need = loading(config, data)
    if config.model.kind in CLASSICAL:
        return need
    _, m, dim = data_shape(config, data)
    b = min(batch_size, max(m, 1))
    chunk = min(k, max(1, pairs_per_pass // b))
    one, widest = inference_floats(activations(config, dim, b, chunk))
    flow, _ = parse_posterior(config.model.posterior)
    units = 0
    if flow != "gaussian" or config.model.upper:  # E_q[z] from 200 draws of 1000 examples
        units, _ = inference_floats(activations(config, dim, min(1000, max(m, 1)), 200))
    if one >= units:
        what = f"a pass of {chunk} x {b} (sample, example) pairs, mostly the {widest.name}"
        need.add(what, widest.keys, FLOAT * one)
    else:
        what = "the active units' pass (200 draws of 1000 examples)"
        need.add(what, "model.posterior", FLOAT * units)
    return need


def sampling(config: Config, n: int, option: str = "--n") -> Need:
    """What drawing ``n`` images at once needs: the weights and data, z and the decoder's
    outputs for n rows (``Run.sample``); the GMM draws n components and n images."""
    need = loading(config)
    _, _, dim = data_shape(config)
    if config.model.kind in CLASSICAL:
        need.add(f"{n:,} samples", option, FLOAT * 4 * n * dim)
        return need
    decoder = activations(config, dim, n, 1)[0]  # (name, keys, kept, largest) of the decoder
    floats = n * sum(latent_sizes(config)) + 3 * decoder.largest
    need.add(f"{n:,} samples at once", f"{option} x model.hidden", FLOAT * floats)
    return need


def scoring(config: Config, n: int, references: int = DEFAULT_SHAPE[0]) -> Need:
    """:meth:`dgm.runs.Run.score`: ``n`` samples, their features, and the distance blocks of
    :mod:`dgm.metrics` (1,000 rows against every reference or sample)."""
    need = sampling(config, n)
    need.add(
        "the samples' features and distances", "--n", FLOAT * (140 * n + 3000 * (n + references))
    )
    return need


def annealing(config: Config, steps: int, chains: int, batch: int = 100) -> Need:
    """AIS (:mod:`dgm.ais`) on ``batch`` examples with ``chains`` chains: the schedule of
    ``steps`` temperatures (a tensor and a Python list), and an HMC step's gradient pass on
    chains x batch rows."""
    need = loading(config)
    need.add(f"a schedule of {steps:,} temperatures", "--steps", 40 * (steps + 1))
    if config.model.kind not in CLASSICAL:
        _, m, dim = data_shape(config)
        kept, busiest = training_floats(activations(config, dim, min(batch, max(m, 1)), chains))
        need.add(f"{chains:,} chains' HMC steps", f"--chains x {busiest.keys}", FLOAT * kept)
    return need


def gradients(config: Config, ks: Sequence[int], batch: int, data: object | None = None) -> Need:
    """``dgm gradvar``: the weights and data, and the gradient pass of the largest K on
    ``batch`` training examples."""
    need = loading(config, data)
    if config.model.kind in CLASSICAL:
        return need
    n, _, dim = data_shape(config, data)
    kept, busiest = training_floats(activations(config, dim, min(batch, n), max(ks)))
    what = f"a gradient pass with K = {shorten(f'{max(ks):,}', 30)}, mostly the {busiest.name}"
    need.add(what, f"--batch-size x --k x {busiest.keys}", FLOAT * kept)
    return need


# -- what the machine has ----------------------------------------------------------------------


def _meminfo() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup() -> int | None:
    """What the cgroup (v2) this process runs in may still allocate, if it has a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available(device: torch.device) -> tuple[int | None, str]:
    """(bytes this process may still allocate on ``device``, a phrase saying whose figure it
    is, with ``{}`` for the amount); None when the machine does not say."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"{device} has {{}} free"
    try:
        import psutil

        memory, source = int(psutil.virtual_memory().available), "this machine has {} available"
    except ImportError:
        memory, source = _meminfo(), "this machine has {} available (MemAvailable)"
    group = _cgroup()
    if group is not None and (memory is None or group < memory):
        return group, "this process's cgroup has {} left (memory.max)"
    return memory, source


def human(nbytes: float) -> str:
    """``1.5 GiB``: bytes with a binary unit."""
    if nbytes >= 1024**6:
        return f"{nbytes:.1e} bytes"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError  # unreachable


def check(need: Need, config: Config, device: torch.device | str, what: str = "this run") -> int:
    """Raise :class:`MemoryLimitError` (one line) when ``need`` exceeds the memory ``device``
    has, or ``train.max_memory``; return the estimate in bytes otherwise."""
    device = torch.device(device)
    total = need.total
    limit, source = available(device)
    cap = config.train.max_memory
    if cap is not None and (limit is None or parse_size(cap) < limit):
        limit, source = parse_size(cap), f"train.max_memory = {cap!r} allows {{}}"
    if limit is None or total <= limit:
        return total
    name, keys, nbytes = need.largest()
    raise MemoryLimitError(
        f"{what} needs about {human(total)} of memory, but {source.format(human(limit))}; the "
        f"largest part is {name}: {human(nbytes)}, set by {keys}"
    )
