"""Variational families q_phi(z | x): ``forward(x, index) -> Distribution``."""

from dgm.variational.amortized import DeterministicEncoder, GaussianEncoder
from dgm.variational.local import LocalGaussian
from dgm.variational.point_mass import PointMass

__all__ = ["DeterministicEncoder", "GaussianEncoder", "LocalGaussian", "PointMass"]
