"""A fixed binarization: the same draws however it is chunked, and a static one served exactly."""

import torch

import dgm.data.batches as batches
from dgm.data import TensorBatches, binarize_fixed


def _one_draw(x, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(x.shape, generator=g, dtype=x.dtype) < x).to(x.dtype)


def test_chunked_draws_are_the_one_draw(monkeypatch):
    x = torch.rand(1234, 50, generator=torch.Generator().manual_seed(0))
    whole = binarize_fixed(x, 7)
    assert torch.equal(whole, _one_draw(x, 7))
    monkeypatch.setattr(batches, "BINARIZE_CHUNK", 333)  # 6 rows a chunk, the last one short
    assert torch.equal(binarize_fixed(x, 7), whole)
    booleans = binarize_fixed(x, 7, torch.bool)
    assert booleans.dtype == torch.bool and torch.equal(booleans.float(), whole)
    for shape in [(), (3, 4, 5), (0, 784)]:
        y = torch.rand(shape)
        assert torch.equal(binarize_fixed(y, 1), _one_draw(y, 1))
    # x ~ U(0, 1): each draw is 1 with probability 1/2; the mean of 61,700 within 5 errors
    assert abs(float(whole.mean()) - 0.5) < 5 * (0.25 / whole.numel()) ** 0.5 + 0.01


def test_a_static_binarization_serves_float_batches_of_the_fixed_draw():
    x = torch.rand(300, 20)
    g = torch.Generator().manual_seed(1)
    loader = TensorBatches(x, 64, shuffle=True, binarize="static", generator=g, static_seed=3)
    fixed = _one_draw(x, 3)
    seen = torch.zeros(300, dtype=torch.bool)
    for xb, index in loader:
        assert xb.dtype == torch.float32
        assert torch.equal(xb, fixed[index])
        seen[index] = True
    assert bool(seen.all())
