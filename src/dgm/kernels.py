r"""Fast kernels: the same functions as their readable definitions, computed another way.

Each kernel here is an exact identity applied to a definition that lives, readable, in the class
that dispatches to it; ``tests/test_kernels.py`` checks each against that definition (float64 to
1e-12, float32 to rounding). They are faster on the CPU; see ``benchmarks/``.

=================================  ============================================================
kernel                             readable definition (the dispatching class)
=================================  ============================================================
:func:`bernoulli_log_mass`         sum_d x_d h_d - softplus(h_d)
                                   (``dgm.models.likelihoods.IndependentBernoulli.log_prob``)
:class:`BernoulliLogMass`          the same, with its gradient written out (training)
:func:`tanh_as_sigmoid`            ``torch.tanh`` (``dgm.nn.Tanh``)
:func:`tanh_mlp_sigmoid_form`      the tanh MLP layer by layer (``dgm.nn.MLP``)
=================================  ============================================================

Imports torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: at most this many factors sigma(|h|) >= 1/2 go into one product: >= 2^-112, still a normal
#: float32 (>= 2^-126)
MAX_FACTORS = 112
#: logits with fewer elements than this take the softplus form (fewer operations) in
#: :func:`bernoulli_log_mass`
PRODUCT_FORM_MIN = 1 << 16


# --- Bernoulli log-mass ------------------------------------------------------------------------


def bernoulli_log_mass_softplus(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The Bernoulli log-mass as written, over the last dimension:

        log p(x | h) = sum_d x_d h_d - softplus(h_d)

    Shapes: h (..., D), x broadcastable to it; returns (...,). The reference the other
    Bernoulli kernels are tested against (and itself tested against torch's Bernoulli).
    """
    return torch.linalg.vecdot(x, h) - F.softplus(h).sum(-1)


def bernoulli_log_mass_product(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The Bernoulli log-mass in the product-of-sigmoids form, for evaluation (no autograd).

    softplus(h) = relu(h) - log sigmoid(|h|) and sum_d relu(h_d) = sum_d (h_d + |h_d|) / 2, so

        log p(x | h) = (x - 1/2) . h - sum_d |h_d| / 2 + sum_g log prod_{d in g} sigmoid(|h_d|)

    where the groups g are runs of at most :data:`MAX_FACTORS` contiguous pixels: every factor
    lies in [1/2, 1], so no product underflows, and there is one logarithm per group instead of
    one per pixel. D need not be a multiple of :data:`MAX_FACTORS` (the last group is shorter).

    Shapes: h (..., D), x broadcastable to it; returns (...,). Tested against
    :func:`bernoulli_log_mass_softplus` in float64 (float32: to rounding).
    """
    a = h.abs()
    # x . h - sum_d relu(h_d) = (x - 1/2) . h - sum_d |h_d| / 2
    linear = torch.linalg.vecdot(x - 0.5, h) - a.sum(-1).mul_(0.5)  # (...,)
    p = torch.sigmoid_(a)  # (..., D), in [1/2, 1]
    d = p.shape[-1]
    whole = d - d % MAX_FACTORS  # pixels in whole groups of MAX_FACTORS
    log_prod = linear.new_zeros(())
    if whole:
        groups = p[..., :whole].unflatten(-1, (whole // MAX_FACTORS, MAX_FACTORS))  # (..., G, M)
        log_prod = groups.prod(-1).log_().sum(-1)  # (...,)
    if whole < d:  # the last, shorter group
        log_prod = log_prod + p[..., whole:].prod(-1).log_()  # (...,)
    return linear + log_prod


def bernoulli_log_mass(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""sum_d x_d h_d - softplus(h_d) for evaluation (no autograd):
    :func:`bernoulli_log_mass_product` for logits of at least :data:`PRODUCT_FORM_MIN` elements,
    :func:`bernoulli_log_mass_softplus` below (a training batch: fewer operations).

    Shapes: h (..., D), x broadcastable to it; returns (...,). Tested against
    :func:`bernoulli_log_mass_softplus` on both sides of the threshold.
    """
    if h.numel() < PRODUCT_FORM_MIN:
        return bernoulli_log_mass_softplus(h, x)
    return bernoulli_log_mass_product(h, x)


def broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether ``shape`` broadcasts to ``target`` unchanged, i.e.
    ``torch.broadcast_shapes(target, shape) == target`` (which it is tested against), without
    that function's Python overhead."""
    return len(shape) <= len(target) and all(
        a == 1 or a == b for a, b in zip(reversed(shape), reversed(target), strict=False)
    )


class BernoulliLogMass(torch.autograd.Function):
    r""":func:`bernoulli_log_mass_softplus` with its gradient written out, for training:

        d log p / d h_d = (x_d - sigmoid(h_d)) g,        d log p / d x_d = h_d g

    for an incoming gradient g (...,), each summed to its input's shape where x and h
    broadcast (x (B, D) against h (K, B, D)). The backward is itself differentiable (second
    derivatives, ``create_graph``); without ``create_graph`` the h-gradient is computed in place
    where x broadcasts to h. Shapes as :func:`bernoulli_log_mass_softplus`. Tested against
    autograd of :func:`bernoulli_log_mass_softplus` (``torch.autograd.gradcheck``, float64).

    >>> h = torch.randn(3, 5, requires_grad=True)
    >>> BernoulliLogMass.apply(h, torch.ones(5)).shape
    torch.Size([3])
    """

    @staticmethod
    def forward(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_mass_softplus(h, x)  # (...,)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:  # noqa: ANN001
        # forward and setup_context apart: torch.func's transforms (the whole compiled step's
        # grad_and_value, dgm.methods.compiled) accept only this form
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        h, x = ctx.saved_tensors
        g = g.unsqueeze(-1)  # (..., 1)
        grad_h = grad_x = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled() or not broadcasts_to(x.shape, h.shape):
                grad_h = (x - torch.sigmoid(h)) * g  # create_graph needs it differentiable
            else:  # in place: one buffer instead of three
                grad_h = torch.sigmoid(h).sub_(x).mul_(-g)
            grad_h = grad_h.sum_to_size(h.shape)
        if ctx.needs_input_grad[1]:
            grad_x = (h * g).sum_to_size(x.shape)
        return grad_h, grad_x


# --- tanh networks -----------------------------------------------------------------------------


def tanh_as_sigmoid(a: torch.Tensor) -> torch.Tensor:
    r"""tanh by the exact identity

        tanh(a) = 2 sigmoid(2 a) - 1

    elementwise, any shape; for evaluation (the last two steps are in place). Tested against
    ``torch.tanh`` (float32: within 2.4e-7 absolute).
    """
    return torch.sigmoid(2.0 * a).mul_(2.0).sub_(1.0)


def tanh_mlp_sigmoid_form(linears: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    r"""The MLP ``linears[0], tanh, linears[1], tanh, ..., linears[-1]`` evaluated as a sigmoid
    MLP, for evaluation (no autograd).

    With tanh(a) = 2 sigmoid(2 a) - 1, each hidden layer keeps s = sigmoid(2 a), and the next
    layer takes

        W (2 s - 1) + b = (2 W) s + (b - W 1)

    so the 2 and the -1 go into the weights (a few operations on the weights per call, which
    are left unchanged) instead of three passes over every hidden activation.

    Shapes: x (..., in) -> (..., out). Tested against the same layers with ``torch.tanh``
    between them (``dgm.nn.MLP`` outside inference mode).
    """
    s = x
    for i, layer in enumerate(linears):
        w, b = layer.weight, layer.bias
        if i > 0:  # the input is s = (t + 1) / 2 of the previous layer's t = tanh(a)
            w, b = 2.0 * w, b - w.sum(1)
        if i == len(linears) - 1:
            return F.linear(s, w, b)  # (..., out)
        s = torch.sigmoid_(F.linear(s, 2.0 * w, 2.0 * b))  # (..., width)
    raise ValueError("an MLP ends with a Linear: linears must not be empty")
