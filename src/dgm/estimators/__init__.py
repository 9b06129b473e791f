r"""Gradient estimators: the only code that samples z during training.

Each estimator is one class that declares the bounds it estimates the gradient of and what it
needs of the posterior (:class:`~dgm.estimators.base.Estimator`); :func:`refusal` says why a
combination is invalid. Names in configs map to these classes in :mod:`dgm.registry`.
"""

from dgm.estimators.base import (
    Estimate,
    Estimator,
    Refusal,
    annealing,
    free_bits_kl,
    refusal,
)
from dgm.estimators.path import DReG, StickingTheLanding, path_terms
from dgm.estimators.pathwise import Reparameterized
from dgm.estimators.score import ScoreFunction
from dgm.estimators.vimco import VIMCO

__all__ = [
    "DReG",
    "Estimate",
    "Estimator",
    "Refusal",
    "Reparameterized",
    "ScoreFunction",
    "StickingTheLanding",
    "VIMCO",
    "annealing",
    "free_bits_kl",
    "path_terms",
    "refusal",
]
