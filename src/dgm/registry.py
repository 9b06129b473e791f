r"""Names in configurations and on the command line, and the classes they stand for.

The one place that knows the valid combinations of bound, estimator and posterior, by asking
the objects what they declare (:func:`dgm.estimators.refusal`): configuration validation and the
builders call :func:`check`. A new estimator is one class and one line in :data:`ESTIMATORS`.
"""

from __future__ import annotations

from dgm.estimators import (
    VIMCO,
    DReG,
    Estimator,
    Reparameterized,
    ScoreFunction,
    StickingTheLanding,
    refusal,
)
from dgm.objectives import ELBO, IWAE, Bound, Reconstruction
from dgm.variational import (
    DeterministicEncoder,
    FlowEncoder,
    GaussianEncoder,
    HierarchicalEncoder,
    LocalGaussian,
)
from dgm.variational.semi_implicit import SemiImplicitEncoder

#: ``objective.estimator`` -> its class (``score-baseline`` is the score function with a
#: control variate, ``objective.baseline``)
ESTIMATORS: dict[str, type[Estimator]] = {
    "reparam": Reparameterized,
    "score": ScoreFunction,
    "score-baseline": ScoreFunction,
    "stl": StickingTheLanding,
    "dreg": DReG,
    "vimco": VIMCO,
}

#: ``objective.bound`` -> its class
BOUNDS: dict[str, type[Bound]] = {"elbo": ELBO, "iwae": IWAE}


def posterior_class(flow: str, upper_layers: int, local: bool, autoencoder: bool) -> type:
    """The class of q(z | x) for ``model.posterior``'s flow name (``gaussian`` or a flow), the
    number of upper stochastic layers, per-datapoint inference, and the plain autoencoder."""
    if local:
        return LocalGaussian
    if autoencoder:
        return DeterministicEncoder
    if flow == "sivi":
        return SemiImplicitEncoder
    if flow != "gaussian":
        return FlowEncoder
    return HierarchicalEncoder if upper_layers else GaussianEncoder


def make_bound(name: str, kl: str, autoencoder: bool = False) -> Bound:
    """The bound object for ``objective.bound`` and a resolved KL mode (``analytic``/``mc``)."""
    if autoencoder:
        return Reconstruction()
    if name == "iwae":
        if kl == "analytic":
            raise ValueError(
                "bound = 'iwae' works on log-weights, with no KL term: set kl = 'auto' or 'mc'"
            )
        return IWAE()
    return ELBO(kl=kl)


def resolve_kl(bound: str, kl: str, estimator: str, provides: frozenset[str]) -> str:
    """``auto``: the closed form when there is one (the ELBO, a q that ``provides`` a
    closed-form KL, an estimator that can use it), else Monte Carlo."""
    if kl != "auto":
        return kl
    closed = (
        bound == "elbo"
        and "closed_form_kl" in provides
        and "analytic" in ESTIMATORS[estimator].kl_modes
    )
    return "analytic" if closed else "mc"


def supporting(bound: Bound, provides: frozenset[str], k: int | None = None) -> list[str]:
    """The registered estimators that can train ``bound`` with such a posterior."""
    return [
        name
        for name, cls in ESTIMATORS.items()
        if name != "score-baseline" and refusal(cls, bound, provides, k) is None
    ]


def check(estimator: str, bound: Bound, posterior: type, k: int, posterior_name: str) -> None:
    """Raise ValueError (one line) if ``estimator`` cannot train ``bound`` with ``posterior``
    and ``k`` samples; ``posterior_name`` says which posterior in the message."""
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"objective.estimator = '{estimator}' is unknown: expected one of "
            + ", ".join(f"'{n}'" for n in ESTIMATORS)
        )
    refused = refusal(ESTIMATORS[estimator], bound, posterior.provides, k)
    if refused is None:
        return
    others = supporting(bound, posterior.provides, k)
    use = " or ".join(f"'{n}'" for n in others)
    if refused.about == "posterior":
        message = f"{posterior_name} {refused.reason}"
        if others and "kl" not in refused.reason:
            message += f": objective.estimator must be {use}"
    else:
        message = f"estimator = '{estimator}' {refused.reason}"
        if others and "kl =" not in refused.reason:
            message += f"; for {bound.title} use {use}"
    raise ValueError(message)
