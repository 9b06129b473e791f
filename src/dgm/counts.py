r"""Counts from a configuration alone, before anything is built: the parameters of every network
it describes (encoder, decoder, flow steps, the conditionals of upper stochastic layers, the NVIL
baseline, per-datapoint tables, a family's networks: exactly, tests compare the counts with
built models) and the floats a step keeps for its backward pass (batch x K x every width).
:mod:`dgm.sizes` turns them into bytes and refuses a run that cannot fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dgm.families as families
from dgm.config import Config, parse_posterior
from dgm.families.base import meta_count

FLOAT = 4  # bytes of a float32
SYLVESTER_REFLECTIONS = 8  # dgm.flows.SylvesterStep's default


@dataclass(frozen=True)
class Part:
    """One network (or table) of a run: its trainable parameters, its buffers' bytes, and the
    config keys that size it."""

    name: str
    keys: str
    parameters: int
    buffer_bytes: int = 0
    table: bool = False  # a per-datapoint table (SparseAdam; not in the global Adam)


# -- parameters --------------------------------------------------------------------------------


def linear(n_in: int, n_out: int) -> int:
    """Parameters of ``nn.Linear(n_in, n_out)``: weight and bias."""
    return n_in * n_out + n_out


def mlp(n_in: int, hidden: Sequence[int], n_out: int) -> int:
    """Parameters of :class:`dgm.nn.MLP` ``n_in -> hidden -> n_out``."""
    widths = [n_in, *hidden, n_out]
    return sum(linear(a, b) for a, b in zip(widths, widths[1:], strict=False))


def _flow_step(flow: str, d: int, c: int) -> tuple[int, int]:
    """(parameters, buffer bytes) of one flow step with latent size d and context size c."""
    if flow == "planar":
        return linear(c, 2 * d + 1), 0
    if flow == "radial":
        return linear(c, d + 2), 0
    if flow == "iaf":  # MADE(d, [c, c], c, n_out=2): masks as float buffers, degrees int64
        params = linear(d, c) + linear(c, c) + linear(c, c) + linear(c, 2 * d)
        return params, FLOAT * (d * c + c * c + 2 * d * c) + 8 * d
    m = SYLVESTER_REFLECTIONS  # sylvester: every R, R~, b and reflection from the context
    return linear(c, 2 * d * d + d + m * d), FLOAT * d * d


def latent_sizes(config: Config) -> list[int]:
    mc = config.model
    return [mc.latent_dim, *(layer.latent_dim for layer in mc.upper)]


def networks(config: Config, data_dim: int, n_train: int) -> list[Part]:
    """Every network and table a (non-classical) configuration builds, as :func:`dgm.build`
    builds them (``build_model``, ``build_posterior``, ``build_estimator``)."""
    mc, oc = config.model, config.objective
    fam = families.family(mc.kind)
    if fam is not None:  # counted from the modules themselves, built on the meta device
        return [
            Part(name, keys, meta_count(module), FLOAT * sum(b.numel() for b in module.buffers()))
            for name, keys, module in fam.networks(config, data_dim)
        ]
    D, d = data_dim, mc.latent_dim
    out = 2 * D if mc.likelihood == "gaussian-learned" else D
    sigma = 1 if mc.likelihood == "gaussian-isotropic" else 0
    parts = [
        Part(
            "decoder",
            "model.latent_dim, model.hidden",
            mlp(d, mc.hidden[::-1], out) + sigma,
            0 if mc.upper else FLOAT * 2 * d,  # the standard normal prior's loc and scale
        )
    ]
    sizes = latent_sizes(config)
    if mc.upper:
        prior = sum(
            mlp(sizes[i + 1], layer.hidden[::-1], 2 * sizes[i]) for i, layer in enumerate(mc.upper)
        )
        parts.append(Part("upper layers' priors", "model.upper", prior, FLOAT * 2 * sizes[-1]))
    flow, steps = parse_posterior(mc.posterior)
    if config.inference.kind == "local":
        keys = "the training examples x model.latent_dim"
        parts.append(Part("per-datapoint tables", keys, 2 * n_train * d, table=True))
    elif mc.kind == "ae":
        parts.append(Part("encoder", "model.hidden, model.latent_dim", mlp(D, mc.hidden, d)))
    elif flow == "sivi":
        c = mc.hidden[-1] if mc.hidden else D
        trunk = mlp(D, mc.hidden[:-1], c) if mc.hidden else 0
        mixer = mlp(c + mc.sivi_noise_dim, [c], d)
        keys = "model.hidden, model.latent_dim, model.sivi_noise_dim"
        parts.append(Part("semi-implicit encoder", keys, trunk + linear(c, d) + mixer))
    elif flow != "gaussian":
        c = mc.hidden[-1] if mc.hidden else D
        trunk = mlp(D, mc.hidden[:-1], c) if mc.hidden else 0
        parts.append(Part("encoder", "model.hidden, model.latent_dim", trunk + linear(c, 2 * d)))
        one, buffers = _flow_step(flow, d, c)
        parts.append(
            Part(
                f"{steps} {flow} flow steps",
                "model.posterior, model.latent_dim, model.hidden[-1]",
                steps * one,
                steps * buffers,
            )
        )
    else:
        parts.append(Part("encoder", "model.hidden, model.latent_dim", mlp(D, mc.hidden, 2 * d)))
        if mc.upper:
            q = sum(
                mlp(sizes[i], layer.hidden, 2 * sizes[i + 1]) for i, layer in enumerate(mc.upper)
            )
            parts.append(Part("upper layers' encoders", "model.upper", q))
    learned = oc.baseline == "learned" or (oc.baseline == "auto" and oc.k == 1)
    if oc.estimator == "score-baseline" and learned:
        parts.append(
            Part("NVIL baseline", "objective.baseline_hidden", mlp(D, [oc.baseline_hidden], 1))
        )
    return parts


def parameter_count(config: Config, data_dim: int, n_train: int) -> int:
    """Trainable parameters of the run, tables included (what ``sum(p.numel())`` counts over
    the model, the posterior and the estimator once built)."""
    return sum(p.parameters for p in networks(config, data_dim, n_train))


# -- activations -------------------------------------------------------------------------------


def _mlp_outputs(rows: int, hidden: Sequence[int], n_out: int) -> tuple[int, int]:
    """(floats kept for the backward pass, the largest tensor) of an MLP on ``rows`` rows: every
    hidden layer's linear output and activation, and the output."""
    kept = sum(2 * rows * h for h in hidden) + rows * n_out
    return kept, rows * max([*hidden, n_out])


@dataclass(frozen=True)
class Activation:
    """One network's share of a forward pass: floats kept for the backward pass, and its largest
    single tensor (what a pass without a graph, under ``torch.inference_mode``, holds)."""

    name: str
    keys: str
    kept: int
    largest: int


WIDTHS = "model.hidden, model.latent_dim"


def activations(config: Config, data_dim: int, batch: int, k: int) -> list[Activation]:
    """Per network, its activations in one forward pass on ``batch`` examples with ``k``
    samples of z each (K x B rows after sampling)."""
    mc = config.model
    fam = families.family(mc.kind)
    if fam is not None:
        floats = fam.activation_floats(config, data_dim, batch)
        return [Activation(f"{mc.kind} networks", f"{mc.kind}.*", floats, max(1, floats // 8))]
    D, d = data_dim, mc.latent_dim
    rows = batch * k
    sizes = latent_sizes(config)
    out = 2 * D if mc.likelihood == "gaussian-learned" else D
    kept, big = _mlp_outputs(rows, mc.hidden[::-1], out)
    result = [Activation("decoder", WIDTHS, kept + 3 * rows * D, max(big, rows * D))]  # + log p
    z = 4 * rows * sum(sizes)  # noise, z, log q and log p terms per latent unit
    flow, steps = parse_posterior(mc.posterior)
    if config.inference.kind == "local":
        result.append(Activation("posterior", "model.latent_dim", 4 * batch * d + z, rows * d))
    elif flow == "sivi":  # the mixing network on (K + J) x B rows, the (K, J + 1, B) mixture
        c = mc.hidden[-1] if mc.hidden else D
        kept, big = _mlp_outputs(batch, mc.hidden, d)
        draws = (k + steps) * batch
        mix, mix_big = _mlp_outputs(draws, [c], d)
        mixture = rows * (steps + 1) * 3
        keys = "model.posterior, model.hidden"
        result.append(Activation("encoder", WIDTHS, kept + z, big))
        result.append(
            Activation(
                "mixing network",
                keys,
                mix + draws * (c + mc.sivi_noise_dim) + mixture,
                max(mix_big, mixture),
            )
        )
    elif flow != "gaussian":
        c = mc.hidden[-1] if mc.hidden else D
        kept, big = _mlp_outputs(batch, mc.hidden, 2 * d)
        result.append(Activation("encoder", WIDTHS, kept + z, max(big, rows * d)))
        one, big = {
            "planar": (3 * rows * d + 2 * batch * (2 * d + 1), rows * d),
            "radial": (3 * rows * d + batch * (d + 2), rows * d),
            "iaf": (4 * rows * c + 7 * rows * d + d * c + c * c + 2 * d * c, rows * max(c, d)),
            "sylvester": (
                (6 * SYLVESTER_REFLECTIONS + 8) * rows * d + 6 * batch * d * d,
                max(rows * d, batch * d * d),
            ),
        }[flow]
        keys = "model.posterior, model.latent_dim"
        result.append(Activation(f"{flow} flow", keys, steps * one, big))
    else:
        kept, big = _mlp_outputs(batch, mc.hidden, 2 * d)
        result.append(Activation("encoder", WIDTHS, kept + z, max(big, rows * d)))
        for i, layer in enumerate(mc.upper):  # q(z_{i+1} | z_i) and p(z_i | z_{i+1}) on K x B
            q = _mlp_outputs(rows, layer.hidden, 2 * sizes[i + 1])
            p = _mlp_outputs(rows, layer.hidden[::-1], 2 * sizes[i])
            name = f"upper layer {i + 1}"
            result.append(Activation(name, "model.upper", q[0] + p[0], max(q[1], p[1])))
    oc = config.objective
    if oc.estimator == "score-baseline":
        kept = 2 * batch * oc.baseline_hidden + 4 * rows
        result.append(Activation("baseline", "objective.baseline_hidden", kept, rows))
    return result


def training_floats(acts: list[Activation]) -> tuple[int, Activation]:
    """Floats of a training pass (kept for the backward, and the backward's own gradients of
    the largest tensor), and the network that keeps most."""
    busiest = max(acts, key=lambda a: a.kept)
    return sum(a.kept for a in acts) + 2 * max(a.largest for a in acts), busiest


def inference_floats(acts: list[Activation]) -> tuple[int, Activation]:
    """Floats of a pass without a graph (a few live tensors at a time), and its widest network."""
    widest = max(acts, key=lambda a: a.largest)
    return 3 * widest.largest, widest
