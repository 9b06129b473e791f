"""Minibatches: epochs are permutations, binarization has the right law, seeds reproduce."""

from __future__ import annotations

import pytest
import torch

from dgm.data import Binarize, TensorBatches, binarize_fixed, to_unit_interval
from dgm.errors import UsageError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _grey(n: int, d: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g).to(device)  # (N, D) in [0, 1)


def _batches(x: torch.Tensor, seed: int = 0, **kwargs: object) -> TensorBatches:
    options: dict = {"batch_size": 10, "shuffle": True, "binarize": "dynamic"} | kwargs
    g = torch.Generator(device=x.device).manual_seed(seed)
    return TensorBatches(x, generator=g, **options)


def _epoch(batches: TensorBatches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, indices = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(indices)  # (N, D), (N,)


def test_to_unit_interval() -> None:
    images = torch.tensor([[[0, 255], [128, 1]]], dtype=torch.uint8)  # (1, 2, 2)
    x = to_unit_interval(images)
    assert x.dtype == torch.float32 and x.shape == (1, 4)
    assert torch.equal(x, torch.tensor([[0.0, 1.0, 128 / 255, 1 / 255]]))
    with pytest.raises(UsageError, match="uint8"):
        to_unit_interval(images.float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_index_once_per_epoch(device: str, drop_last: bool) -> None:
    batches = _batches(_grey(103, 3, device), drop_last=drop_last)
    assert len(batches) == (10 if drop_last else 11)
    for _ in range(2):
        sizes = [len(index) for _, index in batches]
        assert len(sizes) == len(batches)
        assert sizes == [10] * 10 + ([] if drop_last else [3])
        _, index = _epoch(batches)
        assert index.dtype == torch.int64 and index.device.type == device
        assert len(torch.unique(index)) == len(index)
        if not drop_last:
            assert torch.equal(index.sort().values.cpu(), torch.arange(103))


def test_without_shuffle_order_is_the_identity() -> None:
    _, index = _epoch(_batches(_grey(25, 2), shuffle=False, binarize="none"))
    assert torch.equal(index, torch.arange(25))


def test_shuffle_changes_between_epochs() -> None:
    batches = _batches(_grey(50, 2))
    first, second = _epoch(batches)[1], _epoch(batches)[1]
    assert not torch.equal(first, second)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("binarize", list(Binarize))
def test_rows_follow_the_index(device: str, binarize: Binarize) -> None:
    """Rows of 0s and 1s are left alone by every binarization, so x[i] must be row index[i]."""
    n, d = 40, 8
    bits = (torch.arange(n)[:, None] >> torch.arange(d)[None, :]) & 1  # (N, D): row i encodes i
    x = bits.to(torch.float32).to(device)
    for x_batch, index in _batches(x, binarize=binarize, batch_size=7):
        assert x_batch.shape == (len(index), d) and x_batch.dtype == torch.float32
        assert torch.equal(x_batch, x[index])


def test_none_returns_the_grey_levels_exactly() -> None:
    x = _grey(30, 5)
    for x_batch, index in _batches(x, binarize="none"):
        assert torch.equal(x_batch, x[index])


@pytest.mark.parametrize("binarize", ["dynamic", "static"])
def test_same_seed_same_batches(binarize: str) -> None:
    x = _grey(37, 6)
    a, b = _batches(x, seed=3, binarize=binarize), _batches(x, seed=3, binarize=binarize)
    c = _batches(x, seed=4, binarize=binarize)
    for _ in range(2):  # two epochs
        (xa, ia), (xb, ib), (_, ic) = _epoch(a), _epoch(b), _epoch(c)
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
        assert not torch.equal(ia, ic)


def test_generator_state_replays_an_epoch() -> None:
    batches = _batches(_grey(20, 4))
    state = batches.generator.get_state()
    xa, ia = _epoch(batches)
    batches.generator.set_state(state)
    xb, ib = _epoch(batches)
    assert torch.equal(ia, ib) and torch.equal(xa, xb)


def _by_index(batches: TensorBatches) -> torch.Tensor:
    x, index = _epoch(batches)
    return x[index.argsort()]  # (N, D) in example order


def test_dynamic_draws_are_fresh_and_binary() -> None:
    batches = _batches(torch.full((8, 100), 0.5))
    first, second = _by_index(batches), _by_index(batches)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # equal with probability 2^-800


def test_dynamic_draws_have_the_grey_level_as_mean() -> None:
    p = torch.tensor([[0.0, 0.02, 0.3, 0.5], [0.77, 0.9, 0.999, 1.0]], dtype=torch.float64)
    batches = _batches(p, batch_size=2, shuffle=False)
    m = 4000
    total = sum(_by_index(batches) for _ in range(m))  # (2, 4)
    mean = total / m
    se = (p * (1 - p) / m).sqrt()
    assert torch.all((mean - p).abs() <= 4 * se), (mean, p)
    assert torch.equal(mean[p == 0], p[p == 0]) and torch.equal(mean[p == 1], p[p == 1])


def test_static_draw_is_fixed_and_independent_of_the_generator() -> None:
    x = _grey(30, 50)
    a = _batches(x, seed=1, binarize="static", static_seed=7)
    b = _batches(x, seed=2, binarize="static", static_seed=7)
    first = _by_index(a)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(first, _by_index(a))  # a second pass: same draw
    assert torch.equal(first, _by_index(b))  # another generator: same draw
    assert torch.equal(first, binarize_fixed(x, 7))
    c = _batches(x, seed=1, binarize="static", static_seed=8)
    assert not torch.equal(first, _by_index(c))


def test_binarize_fixed_has_the_grey_level_as_mean() -> None:
    p = torch.tensor([0.05, 0.5, 0.93], dtype=torch.float64)
    n = 20000
    b = binarize_fixed(p.expand(n, 3), seed=0)  # (n, 3)
    assert b.dtype == torch.float64 and set(b.unique().tolist()) <= {0.0, 1.0}
    se = (p * (1 - p) / n).sqrt()
    assert torch.all((b.mean(0) - p).abs() <= 4 * se)
    assert torch.equal(b, binarize_fixed(p.expand(n, 3), seed=0))
    assert not torch.equal(b, binarize_fixed(p.expand(n, 3), seed=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_binarize_fixed_is_the_same_on_every_device() -> None:
    x = _grey(10, 20)
    assert torch.equal(binarize_fixed(x.cuda(), 5).cpu(), binarize_fixed(x, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_another_device_is_refused() -> None:
    with pytest.raises(UsageError, match="generator"):
        TensorBatches(_grey(4, 2, "cuda"), 2, True, "dynamic", torch.Generator())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"binarize": "sometimes"}, "sometimes"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        _batches(_grey(4, 2), **kwargs)


@pytest.mark.parametrize(
    ("x", "binarize", "deq"),
    [
        (torch.full((3, 2), 1.5), "dynamic", False),
        (torch.full((3, 2), -0.1), "static", False),
        (torch.full((3, 2), 1.5), "none", True),
        (torch.ones(6), "none", False),
        (torch.ones(3, 2).long(), "none", False),
    ],
)
def test_bad_x(x: torch.Tensor, binarize: str, deq: bool) -> None:
    with pytest.raises(UsageError, match="TensorBatches expects"):
        TensorBatches(x, 2, True, binarize, torch.Generator(), dequantize=deq)


def test_real_valued_data_pass_through_without_binarization() -> None:
    x = torch.randn(5, 3)
    (batch, index), *_ = TensorBatches(x, 5, False, "none", torch.Generator())
    assert torch.equal(batch, x) and torch.equal(index, torch.arange(5))


def test_dequantization_spreads_each_grey_level_over_its_own_bin() -> None:
    from dgm.data import dequantize_fixed

    pixels = torch.randint(0, 256, (400, 30))
    x = pixels.float() / 255.0
    g = torch.Generator().manual_seed(0)
    batches = TensorBatches(x, 400, False, "none", g, dequantize=True)
    a, b = next(iter(batches))[0], next(iter(batches))[0]
    for y in (a, b, dequantize_fixed(x, 3)):
        assert torch.equal(torch.floor(y * 256).long(), pixels)  # inside [pixel, pixel + 1) / 256
        u = y * 256 - pixels  # the uniforms: mean 1/2, variance 1/12, within 4 standard errors
        assert abs(u.mean().item() - 0.5) < 4 * (1 / 12) ** 0.5 / u.numel() ** 0.5
    assert not torch.equal(a, b)  # fresh noise each pass
    assert torch.equal(dequantize_fixed(x, 3), dequantize_fixed(x, 3))
    with pytest.raises(UsageError, match="dequantize"):
        TensorBatches(x, 2, True, "dynamic", g, dequantize=True)
