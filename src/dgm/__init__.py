"""dgm: deep generative models trained by variational Bayes.

The pieces of the lecture, each one object: a generative model p_theta(x, z) (``dgm.models``), a
variational family q_phi(z | x) (``dgm.variational``), a bound over log-weights
(``dgm.objectives``) and a gradient estimator (``dgm.estimators``). ``dgm.fit`` trains a run from
a configuration and ``dgm.load_run`` loads one (``dgm.api``, ``dgm.runs``).
"""

from dgm.api import fit, load_data, load_run, resume
from dgm.baselines import LearnedBaseline, LeaveOneOut, RunningMean
from dgm.callbacks import Callback, TensorBoardLogger
from dgm.config import Config, load_config
from dgm.data import Data, TensorBatches
from dgm.errors import CheckpointError, ConfigError, DataError, DGMError, UsageError
from dgm.estep import fit_local_posterior
from dgm.estimators import (
    VIMCO,
    DReG,
    Estimate,
    Estimator,
    Reparameterized,
    ScoreFunction,
    StickingTheLanding,
)
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
from dgm.objectives import ELBO, IWAE, Bound, Reconstruction, elbo, iwae
from dgm.runs import Run
from dgm.variational import DeterministicEncoder, GaussianEncoder, LocalGaussian, PointMass

__version__ = "0.1.0"

__all__ = [
    "ELBO",
    "IWAE",
    "VIMCO",
    "Bound",
    "Callback",
    "TensorBoardLogger",
    "DReG",
    "Data",
    "Reconstruction",
    "Run",
    "StickingTheLanding",
    "TensorBatches",
    "fit",
    "load_data",
    "load_run",
    "resume",
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
