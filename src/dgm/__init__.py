"""dgm: deep generative models trained by variational Bayes.

The pieces of the lecture, each one object: a generative model p_theta(x, z) (``dgm.models``), a
variational family q_phi(z | x) (``dgm.variational``), a bound over log-weights
(``dgm.objectives``) and a gradient estimator (``dgm.estimators``).
"""

from dgm.baselines import LearnedBaseline, LeaveOneOut, RunningMean
from dgm.config import Config, load_config
from dgm.errors import CheckpointError, ConfigError, DataError, DGMError, UsageError
from dgm.estep import fit_local_posterior
from dgm.estimators import Estimate, Estimator, Reparameterized, ScoreFunction
from dgm.evaluate import LogLikelihood, importance_log_likelihood, inference_gaps
from dgm.gradvar import GradientStats, gradient_variance
from dgm.models import (
    PPCA,
    BernoulliLikelihood,
    DeepLatentModel,
    GaussianLikelihood,
    GaussianMixture,
    IsotropicGaussianLikelihood,
    LearnedGaussianLikelihood,
    StandardNormalPrior,
)
from dgm.nn import MLP
from dgm.objectives import elbo, iwae
from dgm.variational import DeterministicEncoder, GaussianEncoder, LocalGaussian, PointMass

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "PPCA",
    "Estimator",
    "GaussianMixture",
    "GradientStats",
    "IsotropicGaussianLikelihood",
    "LearnedBaseline",
    "LeaveOneOut",
    "LocalGaussian",
    "RunningMean",
    "ScoreFunction",
    "fit_local_posterior",
    "gradient_variance",
    "inference_gaps",
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
