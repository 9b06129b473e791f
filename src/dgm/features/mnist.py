r"""The MNIST feature network that dgm ships, fixed by its checksum.

Inception features mean nothing for 28 x 28 digits, and FIDs from different networks do not
compare (Heusel et al. 2017; the pytorch-fid maintainers advise a classifier trained on the data
set), so every sample-quality metric in dgm (``dgm.metrics``) is computed in the 128-dimensional
penultimate layer of this one LeNet-like classifier (LeCun et al. 1998), trained by
``scripts/train_feature_network.py`` and refused unless its SHA-256 matches ``SHA256``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from dgm.errors import DataError

WEIGHTS = Path(__file__).with_name("mnist_classifier.safetensors")
SHA256 = "2ce2e94d81b0cc496dc6a0753d1cce99dc8ab92e8484989b20e7d23aa378cbee"
FEATURE_DIM = 128


class FeatureNetworkError(DataError):
    """The shipped feature network's file is missing or fails its checksum."""


class MnistClassifier(nn.Module):
    r"""LeNet-like: conv 5x5 (1 -> 32), pool, conv 5x5 (32 -> 32), pool, fc 512 -> 128 -> 10.

    ``features(x)`` is the ReLU of the 128-unit layer, ``forward(x)`` the 10 logits. ``x``: floats
    in [0, 1], of shape ``(N, 784)`` or ``(N, 1, 28, 28)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)  # 28 -> 24, pooled to 12
        self.conv2 = nn.Conv2d(32, 32, 5)  # 12 -> 8, pooled to 4
        self.hidden = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """``(N, 784)`` or ``(N, 1, 28, 28)`` in [0, 1] -> ``(N, 128)`` non-negative features."""
        h = x.reshape(-1, 1, 28, 28) - 0.5  # (N, 1, 28, 28), centred
        h = nn.functional.max_pool2d(torch.relu(self.conv1(h)), 2)  # (N, 32, 12, 12)
        h = nn.functional.max_pool2d(torch.relu(self.conv2(h)), 2)  # (N, 32, 4, 4)
        return torch.relu(self.hidden(h.flatten(1)))  # (N, 128)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 784)`` or ``(N, 1, 28, 28)`` in [0, 1] -> ``(N, 10)`` logits."""
        return self.head(self.features(x))


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_feature_network(
    path: Path, sha256: str, device: str | torch.device = "cpu"
) -> MnistClassifier:
    """Load weights from ``path`` after checking their SHA-256; frozen, in eval mode."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FeatureNetworkError(f"feature network weights missing: {path}")
    actual = sha256_of(path)
    if actual != sha256:
        raise FeatureNetworkError(
            f"feature network {path} fails its checksum: SHA-256 {actual}, expected {sha256}"
        )
    net = MnistClassifier()
    net.load_state_dict(load_file(str(path)))
    net.requires_grad_(False)
    return net.eval().to(device)


@cache
def _load(device: str) -> MnistClassifier:
    return read_feature_network(WEIGHTS, SHA256, device)


def load_feature_network(device: str | torch.device = "cpu") -> MnistClassifier:
    """The shipped classifier on ``device``, checked against ``SHA256``, loaded once per device."""
    return _load(str(torch.device(device)))


@torch.no_grad()
def features_and_labels(x: Tensor, batch_size: int = 200) -> tuple[Tensor, Tensor]:
    """``(N, 784)`` images in [0, 1] -> the shipped network's features ``(N, 128)`` (float32) and
    predicted labels ``(N,)`` (int64), on the device of ``x``."""
    net = load_feature_network(x.device)
    feats = torch.cat([net.features(xb.float()) for xb in x.split(batch_size)])  # (N, 128)
    labels = torch.cat([net.head(fb).argmax(1) for fb in feats.split(batch_size)])  # (N,)
    return feats, labels
