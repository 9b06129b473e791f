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
