"""Networks only: no probability lives here (see ``dgm.models`` and ``dgm.variational``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


class MLP(nn.Sequential):
    r"""A multilayer perceptron ``in -> hidden[0] -> ... -> hidden[-1] -> out``.

    Every hidden layer is ``Linear`` followed by the activation; the output layer is linear.

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
        return super().forward(x)
