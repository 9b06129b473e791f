"""Generative models p_theta(x, z): a prior, a likelihood head and (for deep models) a decoder."""

from dgm.models.deep import DeepLatentModel
from dgm.models.gmm import GaussianMixture
from dgm.models.likelihoods import (
    BernoulliLikelihood,
    GaussianLikelihood,
    IsotropicGaussianLikelihood,
    LearnedGaussianLikelihood,
    Likelihood,
)
from dgm.models.ppca import PPCA
from dgm.models.prior import HierarchicalPrior, StandardNormalPrior

__all__ = [
    "BernoulliLikelihood",
    "DeepLatentModel",
    "GaussianLikelihood",
    "IsotropicGaussianLikelihood",
    "GaussianMixture",
    "HierarchicalPrior",
    "LearnedGaussianLikelihood",
    "Likelihood",
    "PPCA",
    "StandardNormalPrior",
]
