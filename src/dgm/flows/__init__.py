r"""Normalizing-flow steps whose parameters come from the encoder (amortized, per example).

Contract of a step: ``forward(z, h) -> (z', log|det dz'/dz|)`` with z (K, B, d) (any leading
shape that ends in the batch B), the encoder's context h (B, C), z' like z and the log-determinant
z's shape without the last dimension. Steps with a known inverse also have ``inverse(z', h)``.
"""

from dgm.flows.iaf import IAFStep
from dgm.flows.planar import PlanarStep
from dgm.flows.radial import RadialStep
from dgm.flows.sylvester import SylvesterStep

__all__ = ["IAFStep", "PlanarStep", "RadialStep", "SylvesterStep"]
