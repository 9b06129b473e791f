"""What a family of models that is not one variational surrogate plugs into dgm.

A :class:`Family` turns a validated configuration into its method on the training core (its
networks, losses and optimizers) and into the model a loaded run holds; it says which of a
checkpoint's modules that model needs, what pictures a finished run gets, and how much memory
its networks take. The training core, checkpoints, resume, signals, run directories and the
command line know families only through this interface and the registry in
:mod:`dgm.families`.

The model a loaded run holds declares what it supports by what it defines:
``generate(n, mean=..., [steps=...])`` (every family: images in [0, 1], ``(n, D)``),
``elbo`` (a bound on log p(x) in nats, diffusion), and the family's ``provides``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgm.config import Config
from dgm.data.arrays import Data
from dgm.errors import UsageError
from dgm.methods.base import Method


class Family(ABC):
    """One ``model.kind`` of the lecture's last slide (see the module docstring)."""

    #: ``model.kind``
    kind: str
    #: a checkpoint's modules that :meth:`model` loads, in the order it takes them
    modules: tuple[str, ...]
    #: what a loaded run of this family offers beyond sampling: ``"bound"`` (dgm eval reports
    #: a bound on ln p(x) in nats: :meth:`bound`), ``"ais"`` (dgm eval --method ais estimates
    #: ln p(x): over z of :meth:`annealed_model`, or, with ``"partition"`` too, by the
    #: family's own AIS for its partition function, :meth:`log_likelihood`)
    provides: frozenset[str] = frozenset()
    #: ``dgm eval``'s method for this family when none is given (None: it has no ln p(x))
    evaluation: str | None = None
    #: whether its sampler takes a number of steps (diffusion's time steps, Gibbs sweeps)
    sampler_has_steps: bool = True
    #: the panels of curves.png: (y label, metric names)
    curves: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def sampling_steps(self, config: Config) -> int | None:
        """The sampler's steps when none are given (None: the model's own default)."""
        return None

    @abstractmethod
    def method(self, config: Config, data: Data, device: torch.device) -> Method:
        """The family's method, with its modules on ``device`` (seeded by the caller)."""

    @abstractmethod
    def model(self, config: Config, data: Data) -> nn.Module:
        """The untrained model a loaded run holds (what samples and is evaluated)."""

    def restorable(
        self, model: nn.Module, saved: dict[str, dict[str, torch.Tensor]]
    ) -> list[tuple[nn.Module, dict[str, torch.Tensor]]]:
        """From a checkpoint's modules ``saved``: each module of :meth:`model`'s output and the
        state it takes (a missing entry: an empty state, which the loader refuses by name)."""
        (name,) = self.modules
        return [(model, saved.get(name, {}))]

    def trained_model(self, method: Method) -> nn.Module:
        """The model a run holds once ``method`` has trained it (what :meth:`model` builds)."""
        raise NotImplementedError

    def samples_title(self, config: Config) -> str:
        """The caption of the samples beside the training images."""
        return f"samples of the {self.kind}"

    def figures(
        self, config: Config, method: Method, data: Data, run_dir: Path, rows: list[dict[str, Any]]
    ) -> list[Path]:
        """Pictures of a finished run (its metrics ``rows``), written under ``run_dir``: the
        paths written. By default :func:`sample_figures` of the trained model, drawn with
        :meth:`sampling_steps` and captioned :meth:`samples_title`."""
        steps = self.sampling_steps(config)
        return sample_figures(
            self.trained_model(method),
            data,
            run_dir,
            self.samples_title(config),
            binary=config.data.binarize != "none",
            rows=rows,
            curves=self.curves,
            **({} if steps is None else {"steps": steps}),
        )

    def on_epoch(self, method: Method, run_dir: Path, epoch: int) -> list[Path]:
        """Called after each epoch's checkpoint (rank 0): files written, for the record."""
        return []

    @abstractmethod
    def networks(self, config: Config, data_dim: int) -> list[tuple[str, str, nn.Module]]:
        """(name, config keys, module) of every trained network, built on the meta device
        (no memory) for :mod:`dgm.sizes` to count."""

    def activation_floats(self, config: Config, data_dim: int, batch: int) -> int:
        """Floats a training step on ``batch`` examples keeps for its backward pass."""
        return 0

    def ais_settings(self, config: Config) -> tuple[int, int]:
        """AIS's (intermediate distributions, chains or runs) when none are given."""
        return 1000, 16

    def annealed_model(self, model: nn.Module, config: Config, scale: float | None) -> nn.Module:
        """The model AIS and BDMC anneal over z: a decoder model p(x | z) p(z) (by default the
        model itself; ``scale`` is an observation model's sigma, which only some families
        have)."""
        if scale is not None:
            raise UsageError(f"--scale: a '{self.kind}' run has no observation model to scale")
        return model

    def bound(
        self, model: nn.Module, config: Config, x: torch.Tensor, k: int, seed: int, on_batch: Any
    ) -> dict[str, Any]:
        """A bound on ln p(x) in nats for each example of ``x`` (families that provide
        ``"bound"``), summarized; ``k``: the bound's Monte Carlo draws per example."""
        raise UsageError(
            f"a '{self.kind}' run has no bound on ln p(x) to evaluate; estimate it with "
            "--method ais"
        )

    def log_likelihood(
        self, model: nn.Module, data: Data, x: torch.Tensor, steps: int, runs: int, seed: int
    ) -> dict[str, Any]:
        """ln p(x) on ``x`` by the family's own AIS for its partition function (families that
        provide ``"partition"``)."""
        raise UsageError(f"a '{self.kind}' run has no partition function to anneal")


def sample_figures(
    model: nn.Module,
    data: Data,
    run_dir: Path,
    title: str,
    binary: bool,
    rows: list[dict[str, Any]],
    curves: tuple[tuple[str, tuple[str, ...]], ...] = (),
    seed: int = 0,
    **options: Any,
) -> list[Path]:
    """``samples.png`` (64 images of ``model.generate(64, mean=True, **options)``),
    ``train_vs_generated.png`` (beside 64 training images, binarized for ``binary`` data, as
    the lecture shows them) and ``curves.png`` (the metrics ``rows``, when there are any). The
    global RNG is seeded with ``seed`` and restored after."""
    from dgm.plots import save_curves, save_grid, save_side_by_side

    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            images = model.generate(64, mean=True, **options)
        model.train(was)
        x = data.x_train[:64]
        x = torch.bernoulli(x) if binary else x
    finally:
        torch.set_rng_state(state)
    shape = data.image_shape
    written = [run_dir / "samples.png", run_dir / "train_vs_generated.png"]
    save_grid(images, written[0], shape)
    save_side_by_side([("training digits", x), (title, images)], written[1], shape)
    if rows:
        written.append(run_dir / "curves.png")
        save_curves(rows, written[-1], curves or None)
    return written


def meta_count(module: nn.Module) -> int:
    """The trainable parameters of ``module`` (built on the meta device: no memory)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
