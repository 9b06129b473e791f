"""Networks only: no probability lives here (see ``dgm.models`` and ``dgm.variational``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import dgm.kernels as kernels


def _evaluating() -> bool:
    """Whether to take the evaluation kernels of ``dgm.kernels``: under ``torch.inference_mode``
    and not while torch.compile traces (it traces training only: no graph break on the query)."""
    return not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()


class Tanh(nn.Tanh):
    r"""tanh(a) = (e^a - e^-a) / (e^a + e^-a), elementwise, any shape: ``torch.tanh``.

    Under ``torch.inference_mode`` (evaluation) it is computed by
    :func:`dgm.kernels.tanh_as_sigmoid`, the same function to float32 rounding (tested);
    elsewhere (training, ``no_grad``) it is ``torch.tanh`` bit for bit.
    """

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return kernels.tanh_as_sigmoid(a) if _evaluating() else torch.tanh(a)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


class MLP(nn.Sequential):
    r"""A multilayer perceptron ``in -> hidden[0] -> ... -> hidden[-1] -> out``.

    Every hidden layer is ``Linear`` followed by the activation; the output layer is linear.
    The output has the input's dtype: under ``torch.autocast`` (``train.precision =
    "bfloat16"``) the layers compute in bfloat16 and the distributions built from the output
    stay in float32. Under ``torch.inference_mode`` a tanh MLP is evaluated by
    :func:`dgm.kernels.tanh_mlp_sigmoid_form`, the same function (tested).

    >>> MLP(784, [200, 200], 100)(torch.zeros(3, 784)).shape
    torch.Size([3, 100])
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, activation: str = "tanh"
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Act on the last dimension; leading ones pass through: (..., in) -> (..., out)."""
        if self._runs_sigmoid_form(x):  # evaluation: the same function, computed faster
            return kernels.tanh_mlp_sigmoid_form(list(self)[0::2], x)
        out = super().forward(x)
        return out if out.dtype == x.dtype or not x.is_floating_point() else out.to(x.dtype)

    def _runs_sigmoid_form(self, x: torch.Tensor) -> bool:
        """A tanh MLP under ``torch.inference_mode``, not under autocast."""
        return (
            _evaluating()
            and len(self) > 1
            and isinstance(self[1], Tanh)
            and not torch.is_autocast_enabled(x.device.type)
        )


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""A masked autoencoder for distribution estimation (Germain et al. 2015) with a context input
    (Kingma et al. 2016): ``n_out`` outputs per input dimension, output i (in the ordering)
    depends on inputs ordered before i and on the context h only.

    Shapes: ``forward(z, h)`` with z (..., B, d) and h (B, C) returns ``n_out`` tensors, each
    (..., B, d). ``reverse`` orders the dimensions d, ..., 1 instead of 1, ..., d.

    >>> made = MADE(3, [8], context_dim=2)
    >>> m, s = made(torch.zeros(5, 3), torch.zeros(5, 2))
    """

    def __init__(
        self,
        d: int,
        hidden: Sequence[int],
        context_dim: int,
        n_out: int = 2,
        reverse: bool = False,
        activation: str = "elu",
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MADE needs at least one hidden layer")
        degrees_in = torch.arange(1, d + 1)
        if reverse:
            degrees_in = degrees_in.flip(0)
        self.register_buffer("degrees", degrees_in, persistent=False)
        layers: list[nn.Module] = []
        prev = degrees_in
        for width in hidden:
            deg = torch.arange(width) % max(1, d - 1) + 1  # in [1, d - 1]
            layers.append(MaskedLinear(len(prev), width, (deg[:, None] >= prev[None, :]).float()))
            prev = deg
        self.hidden = nn.ModuleList(layers)
        self.context = nn.Linear(context_dim, hidden[0])
        deg_out = degrees_in.repeat(n_out)  # output j * d + i has input i's degree
        self.out = MaskedLinear(len(prev), n_out * d, (deg_out[:, None] > prev[None, :]).float())
        self.act = ACTIVATIONS[activation]()
        self.n_out = n_out

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = self.act(self.hidden[0](z) + self.context(h))  # (..., B, H): h broadcasts over K
        for layer in self.hidden[1:]:
            a = self.act(layer(a))
        return self.out(a).chunk(self.n_out, dim=-1)
