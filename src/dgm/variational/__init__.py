"""Variational families q_phi(z | x): ``forward(x, index) -> Distribution``.

Each family declares what its q offers in ``provides``: ``"rsample"`` (a reparameterized path),
``"density"`` (log q along its own samples: not a point mass), ``"log_prob"`` (log q at any
given z, not only along its own samples), ``"closed_form_kl"`` (a closed-form KL to the prior).
Estimators and bounds say what they need of these. A per-datapoint table says ``amortized =
False``: held-out x need an E-step.
"""

from dgm.variational.amortized import DeterministicEncoder, GaussianEncoder, HierarchicalEncoder
from dgm.variational.flows import FlowEncoder, FlowPosterior, build_flow_steps
from dgm.variational.local import LocalGaussian
from dgm.variational.point_mass import PointMass

__all__ = [
    "DeterministicEncoder",
    "FlowEncoder",
    "FlowPosterior",
    "GaussianEncoder",
    "HierarchicalEncoder",
    "LocalGaussian",
    "PointMass",
    "build_flow_steps",
]
