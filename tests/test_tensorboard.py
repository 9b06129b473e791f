"""TensorBoard logging (dgm.callbacks.TensorBoardLogger): what the event files hold, read back
with TensorBoard's own reader, equals what the run wrote itself (metrics.jsonl, samples.png,
reconstructions.png, the encoder's means); the logger leaves training bit for bit as it was;
a resumed run shows each epoch once; a missing tensorboard is one line."""

import io
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import dgm
from dgm.callbacks import Callback, TensorBoardLogger
from dgm.callbacks.tensorboard import scalar_tag, scalars
from dgm.cli import main
from dgm.train.run import read_metrics
from tests.test_training import _numbers

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

DATA = {"train_limit": 300, "test_limit": 100}
ARGV = [
    "train", "--epochs", "2", "--train-limit", "300", "--test-limit", "100", "--batch-size", "50",
    "--latent-dim", "4", "--hidden", "16", "--device", "cpu", "--quiet",
]  # fmt: skip
GRID = 2 * (8 * (28 + 2) + 2)  # 8 x 8 images of 28 x 28, 2 pixels apart, drawn twice as large


def config(**train):
    return {
        "data": DATA,
        "model": {"latent_dim": 4, "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 50, "device": "cpu", **train},
    }


def events(log_dir):
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def final_tensors(run_dir):
    ckpt = sorted((run_dir / "checkpoints").glob("epoch-*"))[-1]
    return load_file(str(ckpt / "tensors.safetensors"))


def decoded(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("L"))


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny VAE trained 2 epochs by ``dgm train``, with and without --tensorboard."""
    root = tmp_path_factory.mktemp("tensorboard")
    assert main([*ARGV, "--out", str(root / "plain")]) == 0
    assert main([*ARGV, "--out", str(root / "logged"), "--tensorboard"]) == 0
    return root / "plain", root / "logged"


def test_scalars_are_the_metrics_rows_and_the_pictures_are_the_runs(runs):
    """Every number of each metrics.jsonl row is its epoch's scalar (float32, as TensorBoard
    keeps them); samples and reconstructions are one 484 x 484 grid per epoch, the last one the
    run's samples.png and reconstructions.png; the projector holds E_q[z | x] of the first 100
    test images with their labels, for each epoch."""
    _, run_dir = runs
    log_dir = run_dir / "tensorboard"
    tb, rows = events(log_dir), read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2]
    expected = {tag for row in rows for tag in scalars(row)}
    assert {"train/elbo", "test/elbo", "test/kl", "run/lr", "time/train_time_s"} <= expected
    assert set(tb.Tags()["scalars"]) == expected
    for key in rows[0]:
        if key == "epoch" or isinstance(rows[0][key], bool | str | dict):
            continue
        logged = tb.Scalars(scalar_tag(key))
        assert [e.step for e in logged] == [1, 2], key
        assert [e.value for e in logged] == [float(np.float32(row[key])) for row in rows], key

    assert sorted(tb.Tags()["images"]) == ["reconstructions", "samples"]
    for tag, picture in (("samples", "samples.png"), ("reconstructions", "reconstructions.png")):
        images = tb.Images(tag)
        assert [e.step for e in images] == [1, 2]
        assert all((e.width, e.height) == (GRID, GRID) for e in images)
        last = decoded(images[-1].encoded_image_string)
        assert last.shape == (GRID, GRID)
        assert np.array_equal(last, png(run_dir / picture))  # the same images as the run's
        assert not np.array_equal(decoded(images[0].encoded_image_string), last)  # it learned

    run = dgm.load_run(run_dir)
    x = run.data.x_test[:100]
    labels = run.data.test_labels[:100].tolist()
    assert "latent_means" in (log_dir / "projector_config.pbtxt").read_text()
    for step in ("00001", "00002"):
        embedding = log_dir / step / "latent_means"
        assert (embedding / "sprite.png").stat().st_size > 0
        lines = (embedding / "metadata.tsv").read_text().splitlines()
        assert [int(v) for v in lines] == labels
    z = np.loadtxt(log_dir / "00002" / "latent_means" / "tensors.tsv")
    assert z.shape == (100, 4)
    with torch.no_grad():
        mean = run.encode(x).mean.numpy()
    np.testing.assert_allclose(z, mean, rtol=1e-5, atol=1e-6)


def test_the_logger_leaves_training_bit_for_bit_as_it_was(runs, tmp_path):
    """With --tensorboard the weights, optimizer states, RNG states and every metric are those of
    the run without it; a callback that draws one number from the global RNG after each epoch
    changes them (so the comparison sees any draw the logger would take)."""
    plain, logged = runs
    a, b = final_tensors(plain), final_tensors(logged)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _numbers(read_metrics(plain)) == _numbers(read_metrics(logged))

    class Draws(Callback):
        def on_epoch_end(self, run, metrics):
            torch.rand(1)

    drawn = dgm.fit(config(), out=tmp_path / "drawn", callbacks=[Draws()]).path
    first, second = _numbers(read_metrics(plain)), _numbers(read_metrics(drawn))
    assert first[0] == second[0]  # the same run up to the first draw (config() is ARGV's)
    assert first[1] != second[1]
    c = final_tensors(drawn)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_run_resumed_from_an_earlier_checkpoint_shows_each_epoch_once(runs, tmp_path, capsys):
    """Epoch 2 logged, its checkpoint lost: resuming from epoch 1 trains epoch 2 again to the
    same weights, and TensorBoard shows epoch 2 once, the values of the new metrics row (the
    writer purges the older events from step 2 on)."""
    _, logged = runs
    run_dir = tmp_path / "resumed"
    shutil.copytree(logged, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "epoch-0002")
    capsys.readouterr()
    run = dgm.resume(run_dir, callbacks=[TensorBoardLogger()])
    assert run.epoch == 2
    assert capsys.readouterr().out == ""  # the library prints nothing (torch would, here)
    a, b = final_tensors(logged), final_tensors(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    tb, rows = events(run_dir / "tensorboard"), read_metrics(run_dir)
    for key in ("test_elbo", "epoch_time_s", "images_per_s"):
        logged_events = tb.Scalars(scalar_tag(key))
        assert [e.step for e in logged_events] == [1, 2]
        assert [e.value for e in logged_events] == [float(np.float32(r[key])) for r in rows]
    assert [e.step for e in tb.Images("samples")] == [1, 2]


def test_a_family_without_an_encoder_logs_its_samples_only(tmp_path):
    """An RBM: its scalars and a grid of its Gibbs samples per epoch (the run's samples.png at
    the last), no reconstructions and no projector."""
    overrides = {"model": {"kind": "rbm"}, "rbm": {"hidden": 12, "sampling_steps": 5}}
    run = dgm.fit({**config(), **overrides}, out=tmp_path / "rbm", callbacks=[TensorBoardLogger()])
    log_dir = run.path / "tensorboard"
    tb = events(log_dir)
    assert tb.Tags()["images"] == ["samples"]
    assert [e.step for e in tb.Scalars("train/free_energy_gap")] == [1, 2]
    last = decoded(tb.Images("samples")[-1].encoded_image_string)
    assert np.array_equal(last, png(run.path / "samples.png"))
    assert not (log_dir / "projector_config.pbtxt").exists()


def test_a_missing_tensorboard_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(dgm.UsageError, match=r'pip install "dgm\[tensorboard\]"') as err:
        TensorBoardLogger()
    assert "\n" not in str(err.value)
    out = tmp_path / "run"
    assert main([*ARGV, "--out", str(out), "--tensorboard"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and 'pip install "dgm[tensorboard]"' in lines[0]
    assert not out.exists()  # refused before anything was written


def test_tensorboard_is_refused_for_a_model_fitted_by_em(capsys, tmp_path):
    assert main(["train", "--model", "ppca", "--out", str(tmp_path / "p"), "--tensorboard"]) == 2
    assert "fitted by EM" in capsys.readouterr().err
    with pytest.raises(dgm.UsageError, match="fitted by EM"):
        dgm.fit({"model": {"kind": "ppca"}}, out=tmp_path / "q", callbacks=[Callback()])
