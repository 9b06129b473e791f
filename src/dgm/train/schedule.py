"""Learning-rate schedules: pure functions of the (fractional) epoch, so resume needs no state."""

from __future__ import annotations

from typing import Any

IWAE_STAGES = 8  # Burda et al. (2015), section 5: 3^i passes at 1e-3 * 10^(-i/7), i = 0..7


def iwae_stage(epoch: float, epochs: int) -> int:
    """The stage i at (0-based, fractional) ``epoch`` when ``epochs`` are shared among the IWAE
    paper's 8 stages in proportion 3^0 : 3^1 : ... : 3^7 (3,280 epochs: 1, 3, 9, ..., 2,187)."""
    total = sum(3**i for i in range(IWAE_STAGES))  # 3280
    done = 0
    for i in range(IWAE_STAGES):
        done += 3**i
        if epoch * total < done * epochs:  # epoch < epochs * done / total
            return i
    return IWAE_STAGES - 1


def learning_rate(tc: Any, epoch: float, scale: float = 1.0) -> float:
    """The learning rate of the train config ``tc`` at (0-based) ``epoch``, fractional within
    an epoch for the ``iwae`` stairs, times ``scale`` (lowered by recoveries)."""
    if tc.lr_schedule == "iwae":
        return scale * tc.lr * 10 ** (-iwae_stage(epoch, tc.epochs) / 7)
    if tc.lr_schedule == "constant" or tc.epochs == 1:
        return tc.lr * scale
    epoch = int(epoch)
    return scale * tc.lr * (tc.lr_final / tc.lr) ** (epoch / (tc.epochs - 1))


def changes_within_epoch(tc: Any) -> bool:
    """Whether the rate may change between the steps of an epoch: the ``iwae`` stairs, when
    train.epochs < 3280."""
    return tc.lr_schedule == "iwae"
