r"""TensorBoard logging of a training, as a :class:`dgm.callbacks.Callback`.

Needs the optional extra: ``pip install "dgm[tensorboard]"``. Then

    >>> run = dgm.fit(config, out="runs/vae", callbacks=[TensorBoardLogger()])  # doctest: +SKIP

and ``tensorboard --logdir runs/vae/tensorboard`` shows, per epoch (the step is the epoch):

- every number of the epoch's ``metrics.jsonl`` row as a scalar: ``train_<name>`` under
  ``train/<name>``, ``test_<name>`` under ``test/<name>``, the times (``epoch_time_s``,
  ``images_per_s``, ``train_time_s``) under ``time/`` and the rest (``lr``, ``step``,
  ``skipped_steps``, ``threads``) under ``run/``; TensorBoard keeps them as float32;
- ``samples``: a grid of :meth:`dgm.runs.Run.sample` (the means of p(x | z), z ~ p(z), or a
  family's sampler), drawn with a fixed seed, so the same images as ``samples.png``;
- with an encoder q(z | x): ``reconstructions``, fixed test images over the means of
  p(x | z = E_q[z | x]) (as ``reconstructions.png``), and in the projector ``latent_means``,
  E_q[z | x] of the first test images with their labels and thumbnails.

Its draws come from the seed ``seed`` inside :func:`torch.random.fork_rng`: the training's
random streams are left as they were, so a run trains to the same numbers with or without it,
and resumes exactly. A resumed run's writer purges the events of the epochs trained again
(``purge_step``), so each epoch shows once.
"""

from __future__ import annotations

import io
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgm.callbacks.base import Callback
from dgm.errors import UsageError
from dgm.evaluate import posterior_mean
from dgm.plots import image_grid, reconstruction_grid
from dgm.runs import Run

#: the row's numbers that are times, not metrics of the training or test set
TIMES = ("epoch_time_s", "images_per_s", "train_time_s")
INSTALL = 'pip install "dgm[tensorboard]"'


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line UsageError saying how to get
    it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(f"TensorBoard logging needs the tensorboard package: {INSTALL}") from None
    return SummaryWriter


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics row's ``key``: ``train_elbo`` -> ``train/elbo``,
    ``test_kl`` -> ``test/kl``, ``images_per_s`` -> ``time/images_per_s``, ``lr`` -> ``run/lr``."""
    if key in TIMES:
        return f"time/{key}"
    for split in ("train", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1 :]}"
    return f"run/{key}"


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Every number of a metrics row by its tag (not the epoch, which is the step; no flags,
    names or nested records)."""
    return {
        scalar_tag(key): float(value)
        for key, value in metrics.items()
        if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
    }


def has_encoder(run: Run) -> bool:
    """Whether ``run`` encodes any x with one network (no fit per image: not a per-datapoint
    table, not a family without q(z | x))."""
    posterior = run.posterior
    return run.family is None and posterior is not None and getattr(posterior, "amortized", True)


class TensorBoardLogger(Callback):
    """Writes a training to TensorBoard event files in ``log_dir`` (default:
    ``RUN_DIR/tensorboard``), as the module docstring says: the scalars of each epoch, a grid
    of ``samples`` images, ``reconstructions`` test images (a multiple of 8) over their
    reconstructions and ``embedded`` test images' E_q[z | x] in the projector; 0 leaves one
    out. Raises a one-line UsageError when tensorboard is not installed."""

    def __init__(
        self,
        log_dir: str | Path | None = None,
        *,
        samples: int = 64,
        reconstructions: int = 32,
        embedded: int = 256,
        seed: int = 0,
    ) -> None:
        self._writer_class = summary_writer_class()  # missing: the error now, before training
        for name, value in (
            ("samples", samples),
            ("reconstructions", reconstructions),
            ("embedded", embedded),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"TensorBoardLogger: {name} = {value!r}; expected an integer >= 0")
        if reconstructions % 8:
            raise UsageError(
                f"TensorBoardLogger: reconstructions = {reconstructions}; expected a multiple of "
                "8 (rows of 8 test images over their reconstructions)"
            )
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.samples, self.reconstructions, self.embedded = samples, reconstructions, embedded
        self.seed = seed
        self.writer: Any = None

    def on_train_start(self, run: Run) -> None:
        log_dir = self.log_dir if self.log_dir is not None else Path(run.path) / "tensorboard"
        # events of epochs after run.epoch (logged before, trained again now) are purged
        self.writer = self._writer_class(str(log_dir), purge_step=run.epoch + 1)

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        step = int(metrics["epoch"])
        for tag, value in scalars(metrics).items():
            self.writer.add_scalar(tag, value, step)
        with _untouched(run):
            self._pictures(run, step)
        self.writer.flush()  # on disk at each epoch: a killed run loses none

    def on_train_end(self, run: Run) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _pictures(self, run: Run, step: int) -> None:
        shape = run.data.image_shape
        if self.samples:
            images = run.sample(self.samples, seed=self.seed)  # (n, D)
            self._image("samples", image_grid(images, shape), step)
        if not has_encoder(run):
            return
        x = run.data.x_test[: self.reconstructions]  # (B, D)
        if x.shape[0] >= 8:
            torch.manual_seed(self.seed)
            grid = reconstruction_grid(x, run.reconstruct(x), shape)
            self._image("reconstructions", grid, step)
        x = run.data.x_test[: self.embedded]  # (B, D)
        if x.shape[0]:
            torch.manual_seed(self.seed)
            with torch.no_grad():
                z = posterior_mean(run.encode(x))  # (B, d)
            labels = run.data.test_labels
            # an epoch trained again after a resume rewrites its embedding, of which torch
            # prints a warning: dgm does not print
            with redirect_stdout(io.StringIO()):
                self.writer.add_embedding(
                    z.reshape(x.shape[0], -1).float().cpu(),
                    metadata=None if labels is None else labels[: x.shape[0]].tolist(),
                    label_img=x.reshape(-1, 1, *shape).float().cpu(),  # (B, 1, H, W)
                    global_step=step,
                    tag="latent_means",
                )

    def _image(self, tag: str, grid: Any, step: int) -> None:
        self.writer.add_image(tag, np.asarray(grid), step, dataformats="HW")


@contextmanager
def _untouched(run: Run):
    """The training's random generators (the global torch RNG and the run's device's) and the
    modules' train/eval modes as they were on entry."""
    modules = [m for m in (run.model, run.posterior) if m is not None]
    modes = [[sub.training for sub in m.modules()] for m in modules]
    device = torch.device(run.device)
    devices = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        try:
            yield
        finally:
            for m, mode in zip(modules, modes, strict=True):
                for sub, training in zip(m.modules(), mode, strict=True):
                    sub.training = training
