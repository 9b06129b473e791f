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
