"""Networks only: no probability lives here (see ``dgm.models`` and ``dgm.variational``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Tanh(nn.Tanh):
    r"""tanh; under ``torch.inference_mode`` (evaluation) computed as 2 sigmoid(2 a) - 1.

    torch's CPU tanh costs about 1.3 ns per element with 2 threads, 3.6 times as long as this
    form; in importance-sampled evaluation (k * n decoder passes) it took about a quarter of the
    matrix products' time. The identity is exact; in float32 the two differ by at most 2.4e-7
    (absolute, tested).
    Elsewhere (training, ``no_grad`` code such as initializing per-datapoint tables from the
    encoder) it is ``torch.tanh``, so those paths agree bit for bit.
    """

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        # torch.compile traces training only: no graph break on the inference-mode query
        if torch.compiler.is_compiling() or not torch.is_inference_mode_enabled():
            return torch.tanh(a)
        return torch.sigmoid(2.0 * a).mul_(2.0).sub_(1.0)


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
    stay in float32.

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
        if (
            not torch.compiler.is_compiling()
            and torch.is_inference_mode_enabled()
            and len(self) > 1
            and isinstance(self[1], Tanh)
            and not torch.is_autocast_enabled(x.device.type)
        ):
            return self._sigmoid_form(x)
        out = super().forward(x)
        return out if out.dtype == x.dtype or not x.is_floating_point() else out.to(x.dtype)

    def _sigmoid_form(self, x: torch.Tensor) -> torch.Tensor:
        r"""A tanh MLP evaluated as a sigmoid one (evaluation: ``torch.inference_mode``).

        With tanh(a) = 2 sigmoid(2a) - 1, each hidden layer keeps s = sigmoid(2a) and the next
        layer takes W (2s - 1) + b = (2W) s + (b - W 1): the 2 and the -1 go into the weights
        (a few operations on the weights per call) instead of three passes over every hidden
        activation; in importance-sampled evaluation those passes cost about 3% of the time.
        """
        linears = list(self)[0::2]
        s = x
        for i, layer in enumerate(linears):
            w, b = layer.weight, layer.bias
            if i > 0:  # the input is s = (h + 1) / 2 of the previous layer's h = tanh(a)
                w, b = 2.0 * w, b - w.sum(1)
            if i == len(linears) - 1:
                return torch.nn.functional.linear(s, w, b)
            s = torch.sigmoid_(torch.nn.functional.linear(s, 2.0 * w, 2.0 * b))
        raise AssertionError("unreachable: an MLP ends with a Linear")


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
