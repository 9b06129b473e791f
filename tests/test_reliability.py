"""Nothing trusted blindly: a checkpoint that carries code is refused without running it."""

import pickle

import pytest
import torch

from dgm.errors import CheckpointError
from dgm.train import Trainer
from dgm.train.checkpoint import latest_checkpoint
from tests.test_training import small_config


class _Payload:
    """Unpickling this object would create ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("target", ["tensors.safetensors", "state.json"])
def test_a_pickle_payload_renamed_into_a_checkpoint_is_refused_without_running(tmp_path, target):
    config = small_config(**{"train.epochs": 1})
    trainer = Trainer(config, tmp_path / "run")
    trainer.fit()
    path = latest_checkpoint(trainer.checkpoint_dir)
    marker = tmp_path / "pwned"
    for payload in (pickle.dumps(_Payload(marker)), _torch_save_bytes(_Payload(marker), tmp_path)):
        (path / target).write_bytes(payload)
        with pytest.raises(CheckpointError, match=target):
            Trainer(config, tmp_path / "run").restore()
        assert not marker.exists()


def _torch_save_bytes(obj, tmp_path) -> bytes:
    """The same payload in torch.save's zip-of-pickles format (what pythae checkpoints are)."""
    f = tmp_path / "payload.pt"
    torch.save(obj, f)
    return f.read_bytes()


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC half-way through epoch 2's tensors file: epoch 1's checkpoint stays intact, no
    temporary is left, and after space is freed --resume finishes with the numbers of an
    uninterrupted run."""
    import errno

    import dgm.train.checkpoint as checkpoint
    from dgm.train.checkpoint import list_checkpoints, load_checkpoint
    from dgm.train.run import prepare_new_run, read_metrics, train_run
    from tests.test_training import _numbers, same_weights

    config = small_config(**{"train.epochs": 3})
    straight_dir, full_dir = tmp_path / "straight", tmp_path / "full"
    prepare_new_run(config, straight_dir)
    straight = train_run(config, straight_dir)

    real_save = checkpoint.save_file
    calls = {"n": 0}

    def disk_fills_on_second_checkpoint(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(filename, "wb") as f:
                f.write(b"\0" * 1000)  # what fitted before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", disk_fills_on_second_checkpoint)
    prepare_new_run(config, full_dir)
    with pytest.raises(OSError, match="No space left"):
        train_run(config, full_dir)
    kept = list_checkpoints(full_dir / "checkpoints")
    assert [p.name for p in kept] == ["epoch-0001"]
    assert not list((full_dir / "checkpoints").glob(".*"))  # no half-written temporary
    assert load_checkpoint(kept[0]).epoch == 1  # intact and loadable
    assert [r["epoch"] for r in read_metrics(full_dir)] == [1]

    monkeypatch.setattr(checkpoint, "save_file", real_save)  # space freed
    resumed = train_run(config, full_dir, resume=True)
    assert _numbers(read_metrics(full_dir)) == _numbers(read_metrics(straight_dir))
    assert same_weights(straight.model, resumed.model)


_DRIVER = """
import sys, time
import dgm.train.checkpoint as ck
real, delay = ck.save_file, float(sys.argv[1])
def slow_save(tensors, filename, *args, **kwargs):
    print("CHECKPOINT-WRITE", flush=True)
    time.sleep(delay)  # widen the window in which the kill can land mid-write
    with open(filename, "wb") as f:
        f.write(b"partial")  # a torn file under the temporary name
    time.sleep(delay)
    return real(tensors, filename, *args, **kwargs)
ck.save_file = slow_save
from dgm.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _dgm(*argv, delay=0.0):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(delay), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(proc, text, count=1):
    seen = 0
    for line in proc.stdout:
        seen += text in line
        if seen >= count:
            return True
    return False


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_run(tmp_path):
    """Five kills (SIGKILL: no handler runs): at random moments, and three inside checkpoint
    writes (epochs 1, 2 and 3); each run resumed until done must match the uninterrupted run's
    metrics and final weights exactly."""
    import random
    import signal
    import time

    from safetensors.torch import load_file

    from dgm.train.run import read_metrics
    from tests.test_training import _numbers

    small = [
        "--epochs", "3", "--train-limit", "400", "--test-limit", "50", "--hidden", "16",
        "--latent-dim", "3", "--batch-size", "40", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    straight = tmp_path / "straight"
    proc = _dgm("train", "--out", str(straight), *small)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out

    def final(run_dir):
        ckpt = sorted((run_dir / "checkpoints").glob("epoch-*"))[-1]
        return load_file(str(ckpt / "tensors.safetensors"))

    rng = random.Random(0)
    kills = [("random", rng.uniform(0.0, 1.5)) for _ in range(2)] + [
        ("checkpoint", n) for n in (1, 2, 3)
    ]
    for i, (how, when) in enumerate(kills):
        run_dir = tmp_path / f"killed{i}"
        proc = _dgm("train", "--out", str(run_dir), *small, delay=0.3)
        assert _wait_for(proc, "run directory")
        if how == "random":
            time.sleep(when)
        else:
            assert _wait_for(proc, "CHECKPOINT-WRITE", count=when)
            time.sleep(0.3)  # inside the write: the torn temporary file exists now
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)  # reap it and close its pipe
        assert proc.returncode == -signal.SIGKILL  # it died mid-run (3 writes take >= 1.8 s)
        resumed = _dgm("train", "--resume", str(run_dir), "--quiet")
        out, _ = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, out
        assert _numbers(read_metrics(run_dir)) == _numbers(read_metrics(straight)), (how, when)
        a, b = final(run_dir), final(straight)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (how, when)
        assert not list((run_dir / "checkpoints").glob(".*"))  # torn temporaries cleaned up


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_stop_after_a_checkpoint_and_resume_exactly(tmp_path, sig):
    import signal

    from dgm.train.run import read_metrics
    from tests.test_training import _numbers

    small = [
        "--epochs", "4", "--train-limit", "400", "--test-limit", "50", "--hidden", "16",
        "--latent-dim", "3", "--batch-size", "40", "--device", "cpu",
    ]  # fmt: skip
    straight = tmp_path / "straight"
    proc = _dgm("train", "--out", str(straight), "--quiet", *small)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out

    run_dir = tmp_path / "stopped"
    proc = _dgm("train", "--out", str(run_dir), "--quiet", *small, delay=0.5)
    assert _wait_for(proc, "epoch   1")  # printed after epoch 1's checkpoint
    proc.send_signal(getattr(signal, sig))  # lands during epoch 2 (its write takes >= 1 s)
    out, _ = proc.communicate(timeout=120)
    signum = getattr(signal, sig).value
    assert proc.returncode == 128 + signum, out
    # usually during epoch 2; if it lands just after epoch 1's line, it stops after epoch 1
    import re

    stopped = re.search(rf"stopped by {sig} after epoch (\d+)", out)
    assert stopped and "--resume" in out, out
    done = int(stopped.group(1))
    assert done in (1, 2)
    assert [r["epoch"] for r in read_metrics(run_dir)] == list(range(1, done + 1))
    assert (run_dir / "checkpoints" / f"epoch-{done:04d}").is_dir()

    proc = _dgm("train", "--resume", str(run_dir), "--quiet")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert _numbers(read_metrics(run_dir)) == _numbers(read_metrics(straight))


def _poison(trainer, bad):
    """Make the decoder output NaN at the global steps for which ``bad(step)`` is true."""

    def hook(module, inputs, output):
        if module.training and bad(trainer.step):
            return output * float("nan")
        return output

    return trainer.model.decoder.register_forward_hook(hook)


@pytest.mark.parametrize("deferred", [False, True])
def test_a_transient_nan_step_is_skipped_and_training_goes_on(tmp_path, deferred):
    """Also with the deferred checks of CUDA (forced here on the CPU): the same outcome."""
    config = small_config(**{"train.epochs": 2})
    trainer = Trainer(config, tmp_path / "run")
    trainer.defer_checks = deferred
    _poison(trainer, lambda step: step in (3, 4))
    history = trainer.fit()
    assert [h["skipped_steps"] for h in history] == [2, 0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(h["train_elbo"])) for h in history)
    assert trainer.last_fault == (4, "expected log-likelihood E_q[log p(x|z)]")


@pytest.mark.parametrize("deferred", [False, True])
def test_a_nonfinite_gradient_under_a_finite_loss_is_skipped(tmp_path, deferred):
    """Only the gradient goes bad (a backward hook on the decoder's last weight): the loss is
    finite, the one-pass gradient check still skips the step and names the gradient (deferred:
    the fused Adam kernel skips it on the device and its step counters stay)."""
    trainer = Trainer(small_config(**{"train.epochs": 1}), tmp_path / "run")
    trainer.defer_checks = deferred
    weight = [m for m in trainer.model.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    weight = weight.weight
    handle = weight.register_hook(
        lambda g: g * float("inf") if trainer.step in (2, 5) else g  # inf * 0 -> nan too
    )
    history = trainer.fit()
    handle.remove()
    assert history[0]["skipped_steps"] == 2
    assert trainer.last_fault == (5, "gradient of the loss")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    state = trainer.optimizer.state[weight]
    assert torch.isfinite(state["exp_avg"]).all() and torch.isfinite(state["exp_avg_sq"]).all()
    assert int(state["step"]) == trainer.step - 2  # skipped steps are not counted by Adam


@pytest.mark.parametrize("deferred", [False, True])
def test_persistent_nans_restart_from_the_checkpoint_then_stop_with_a_clear_message(
    tmp_path, deferred
):
    from dgm.train.checkpoint import load_checkpoint
    from dgm.train.loop import NumericalError
    from dgm.train.run import prepare_new_run, read_metrics, train_run

    config = small_config(
        **{"train.epochs": 3, "train.max_bad_steps": 5, "train.max_recoveries": 2}
    )
    run_dir = tmp_path / "run"
    prepare_new_run(config, run_dir)
    trainer = Trainer(config, run_dir)
    trainer.defer_checks = deferred
    steps_per_epoch = len(trainer.batches)
    _poison(trainer, lambda step: step >= steps_per_epoch + 2)  # from epoch 2 on, for good
    with pytest.raises(NumericalError) as err:
        train_run(config, run_dir, trainer=trainer)
    message = str(err.value)
    assert "non-finite" in message and "E_q[log p(x|z)]" in message and "train.lr" in message
    assert "epoch-0001" in message and "\n" not in message
    assert trainer.recoveries == 2 and trainer.lr_scale == pytest.approx(0.25)
    # the run directory is still valid: epoch 1's checkpoint and metrics, nothing else
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1]
    assert load_checkpoint(run_dir / "checkpoints" / "epoch-0001").epoch == 1


@pytest.mark.parametrize("deferred", [False, True])
def test_a_restart_with_a_lower_rate_can_get_past_a_bad_stretch(tmp_path, deferred):
    config = small_config(**{"train.epochs": 3, "train.max_bad_steps": 3})
    trainer = Trainer(config, tmp_path / "run")
    trainer.defer_checks = deferred
    steps = len(trainer.batches)

    def bad(step):  # three steps early in epoch 2 go bad, the first time through only
        return steps + 2 <= step < steps + 5 and trainer.recoveries == 0

    _poison(trainer, bad)
    history = trainer.fit()
    assert trainer.recoveries == 1 and trainer.lr_scale == 0.5
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["lr"] == pytest.approx(0.5e-3)


def test_a_read_only_output_directory_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so the read-only file system is simulated: mkdir fails."""
    import errno
    import pathlib

    from dgm.cli import main

    real_mkdir = pathlib.Path.mkdir
    target = tmp_path / "ro" / "run"

    def read_only_mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only_mkdir)
    code = main(["train", "--out", str(target), "--train-limit", "100", "--test-limit", "10",
                 "--device", "cpu", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Read-only file system" in err and str(target) in err
    assert err.count("\n") == 1 and not target.exists()


@pytest.mark.parametrize("target", ["tensors.safetensors", "state.json"])
def test_a_truncated_checkpoint_file_is_refused_naming_it(tmp_path, target):
    config = small_config(**{"train.epochs": 1})
    trainer = Trainer(config, tmp_path / "run")
    trainer.fit()
    path = latest_checkpoint(trainer.checkpoint_dir) / target
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=target):
        Trainer(config, tmp_path / "run").restore()


SMALL_ARGS = ["--train-limit", "200", "--test-limit", "50", "--device", "cpu", "--quiet"]

LOCK_HOLDER = """
import sys, time
from pathlib import Path
from dgm.files import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_two_processes_never_train_one_run(tmp_path, capsys):
    """While another process holds RUN_DIR's lock (as a training process does), resuming the run
    or replacing it with --force is refused in one line, and the run's files are untouched; the
    lock goes with the process."""
    import subprocess
    import sys

    from dgm.cli import main
    from dgm.errors import UsageError
    from dgm.files import run_lock
    from dgm.train.run import prepare_new_run, train_run

    run_dir = tmp_path / "run"
    config = small_config(**{"train.epochs": 1})
    prepare_new_run(config, run_dir)
    train_run(config, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "another process is working on this run" in err and err.count("\n") == 1
        argv = ["train", "--out", str(run_dir), "--force", "--epochs", "1", *SMALL_ARGS]
        assert main(argv) == 2
        assert "another process" in capsys.readouterr().err
        with pytest.raises(UsageError, match="another process"):
            prepare_new_run(config, run_dir, force=True)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    with run_lock(run_dir):  # released with the process
        pass


def test_deferred_checks_train_exactly_as_the_synchronous_ones(tmp_path):
    """CUDA's deferred checks (the device skips a bad update itself, the host reads the flag a
    step later), forced on the CPU, give the synchronous path's metrics and weights exactly."""
    from tests.test_training import _numbers

    runs = {}
    for deferred in (False, True):
        trainer = Trainer(small_config(**{"train.epochs": 2}), tmp_path / str(deferred))
        trainer.defer_checks = deferred
        assert trainer.defer_checks is deferred
        history = trainer.fit()
        runs[deferred] = (history, [p.detach().clone() for p in trainer.model.parameters()])
    (sync, w_sync), (deferred, w_deferred) = runs[False], runs[True]
    assert _numbers(sync) == _numbers(deferred)
    assert all(torch.equal(a, b) for a, b in zip(w_sync, w_deferred, strict=True))
    assert not Trainer(small_config(), tmp_path / "cpu").defer_checks  # the CPU default


@pytest.mark.parametrize("deferred", [False, True])
def test_the_progress_bar_survives_an_epoch_ending_in_skipped_steps(tmp_path, deferred):
    """With the progress bar on, every step after the first of a 20-step epoch is skipped (19,
    one short of max_bad_steps): the bar has nothing new to show at the epoch's end, and the
    epoch still ends with its metrics (19 skipped)."""
    trainer = Trainer(small_config(**{"train.epochs": 1}), tmp_path / "run")
    trainer.defer_checks = deferred
    assert len(trainer.batches) == 20
    _poison(trainer, lambda step: step >= 1)
    history = trainer.fit(progress=True)
    assert history[0]["skipped_steps"] == 19 and torch.isfinite(
        torch.tensor(history[0]["train_elbo"])
    )
