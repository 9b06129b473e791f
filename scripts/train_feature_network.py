"""Train the MNIST feature network that dgm ships (``dgm.features.mnist``).

    python scripts/train_feature_network.py [--epochs 8] [--out src/dgm/features/...]

Fixed seed, one thread, Adam with a cosine learning rate, random shifts of up to 2 pixels, and
half of each batch binarized (x -> 1[u < x]) so the network is at home on grey means and on
Bernoulli samples. Prints test accuracy on the grey and the fixed binarized test sets, then the
SHA-256 of the weights file, which goes into ``dgm.features.mnist.SHA256``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

import dgm
from dgm.data import load_dataset, to_unit_interval
from dgm.features.mnist import WEIGHTS, MnistClassifier, sha256_of


def shift(x: Tensor, g: torch.Generator, max_shift: int = 2) -> Tensor:
    """Shift each image of ``(B, 784)`` by its own integer offsets in [-max_shift, max_shift]."""
    b, s = x.shape[0], max_shift
    padded = torch.nn.functional.pad(x.reshape(b, 28, 28), (s, s, s, s))  # (B, 32, 32)
    dy, dx = torch.randint(0, 2 * s + 1, (2, b, 1), generator=g)  # (B, 1) each
    rows = (torch.arange(28) + dy)[:, :, None]  # (B, 28, 1)
    cols = (torch.arange(28) + dx)[:, None, :]  # (B, 1, 28)
    return padded[torch.arange(b)[:, None, None], rows, cols].reshape(b, 784)


@torch.no_grad()
def accuracy(net: MnistClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of ``(N, 784)`` images whose argmax logit is their label."""
    pred = torch.cat([net(xb).argmax(1) for xb in x.split(1000)])  # (N,)
    return (pred == y).double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    mnist = load_dataset("mnist")
    x_train = to_unit_interval(torch.as_tensor(mnist.train_images))  # (60000, 784)
    y_train = torch.as_tensor(mnist.train_labels)
    x_test = to_unit_interval(torch.as_tensor(mnist.test_images))  # (10000, 784)
    y_test = torch.as_tensor(mnist.test_labels)
    x_test_binary = dgm.load_data().x_test  # (10000, 784), the fixed binarization

    net = MnistClassifier()
    n_params = sum(p.numel() for p in net.parameters())
    steps = args.epochs * (len(x_train) // args.batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(len(x_train) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = shift(x_train[idx], g)  # (B, 784)
            half = args.batch_size // 2
            u = torch.rand(half, 784, generator=g)
            x = torch.cat([(u < x[:half]).float(), x[half:]])  # half binarized, half grey
            loss = torch.nn.functional.cross_entropy(net(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        net.eval()
        print(
            f"epoch {epoch + 1}: loss {total / (i + 1):.4f}, "
            f"test accuracy {accuracy(net, x_test, y_test):.4f} (grey), "
            f"{accuracy(net, x_test_binary, y_test):.4f} (binarized), "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )

    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(args.out))
    print(f"parameters: {n_params}, file: {args.out} ({args.out.stat().st_size} bytes)")
    print(f"training time: {time.perf_counter() - start:.0f} s")
    print(f"SHA256 = {sha256_of(args.out)!r}")


if __name__ == "__main__":
    main()
