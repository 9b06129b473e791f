"""dgm: deep generative models trained by variational Bayes.

The pieces of the lecture, each one object: a generative model p_theta(x, z) (``dgm.models``), a
variational family q_phi(z | x) (``dgm.variational``), a bound over log-weights
(``dgm.objectives``) and a gradient estimator (``dgm.estimators``).
"""

from dgm.config import Config, load_config
from dgm.errors import CheckpointError, ConfigError, DataError, DGMError, UsageError
from dgm.estimators import Estimate, Reparameterized
from dgm.evaluate import LogLikelihood, importance_log_likelihood
from dgm.models import (
    BernoulliLikelihood,
    DeepLatentModel,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
    StandardNormalPrior,
)
from dgm.nn import MLP
from dgm.objectives import elbo, iwae
from dgm.variational import DeterministicEncoder, GaussianEncoder, PointMass

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "BernoulliLikelihood",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DGMError",
    "DataError",
    "DeepLatentModel",
    "DeterministicEncoder",
    "Estimate",
    "GaussianEncoder",
    "GaussianLikelihood",
    "LearnedGaussianLikelihood",
    "LogLikelihood",
    "PointMass",
    "Reparameterized",
    "StandardNormalPrior",
    "UsageError",
    "elbo",
    "importance_log_likelihood",
    "iwae",
    "load_config",
]
