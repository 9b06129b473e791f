"""The families of the lecture's last slide, each a plug-in on the training core: adversarial
training (``gan``), diffusion (``diffusion``), the RBM (``rbm``) and the deep energy-based
model (``ebm``). :func:`family` gives the
:class:`~dgm.families.base.Family` of a ``model.kind``, or None for the variational and
classical models (built by :mod:`dgm.build`)."""

from __future__ import annotations

from dgm.families.adversarial import Adversarial
from dgm.families.base import Family
from dgm.families.diffusion import Diffusion
from dgm.families.energy import DeepEnergy, RestrictedBoltzmann

#: model.kind -> its family (dgm.config.FAMILIES names the same kinds)
FAMILIES: dict[str, Family] = {
    f.kind: f for f in (Adversarial(), Diffusion(), RestrictedBoltzmann(), DeepEnergy())
}

__all__ = ["FAMILIES", "Family", "family"]


def family(kind: str) -> Family | None:
    """The family of ``model.kind`` = ``kind``, or None (vae, ae, ppca, gmm)."""
    return FAMILIES.get(kind)
