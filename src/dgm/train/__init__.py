"""Training: the loop, checkpoints and run directories."""

from dgm.train.loop import Trainer
from dgm.train.run import load_trained, train_run

__all__ = ["Trainer", "load_trained", "train_run"]
