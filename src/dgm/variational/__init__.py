"""Variational families q_phi(z | x): ``forward(x, index) -> Distribution``."""

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
