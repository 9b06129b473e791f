"""Distributions dgm needs beyond torch's, closed-form KLs, and draws with their log-density.

Imports torch only (and dgm.precision): every other part of dgm may import it.
"""

from dgm.distributions.sampling import rsample_and_log_prob, sample_and_log_prob, stop_parameters
from dgm.distributions.standard_normal import StandardNormal, kl_to_prior, normal_kl

__all__ = [
    "StandardNormal",
    "kl_to_prior",
    "normal_kl",
    "rsample_and_log_prob",
    "sample_and_log_prob",
    "stop_parameters",
]
