"""Per-datapoint tables sharded by example id (data-parallel VB-EM), in one process.

Rank r of W holds the rows of the examples n % W == r; the batches give each rank only its own
examples; checkpoints hold the whole table. tests/test_distributed.py runs it on 2 processes.
"""

from __future__ import annotations

import pytest
import torch

from dgm.data import TensorBatches
from dgm.estep import fit_local_posterior
from dgm.variational.local import LocalGaussian, gather_rows, shard_rows


@pytest.mark.parametrize("n, world", [(10, 2), (11, 3), (7, 4)])
def test_shards_answer_for_their_examples_like_the_whole_table(n: int, world: int) -> None:
    torch.manual_seed(0)
    whole = LocalGaussian(n, 3)
    with torch.no_grad():
        whole.lam.normal_()
        whole.log_eta.normal_()
    shards = [LocalGaussian(n, 3, shard=(r, world)) for r in range(world)]
    assert sum(s.lam.shape[0] for s in shards) == n
    for r, shard in enumerate(shards):
        shard.load_state_dict({k: shard_rows(v, r, world) for k, v in whole.state_dict().items()})
        own = torch.arange(r, n, world)
        q, q_whole = shard(None, own), whole(None, own)
        assert torch.equal(q.mean, q_whole.mean) and torch.equal(q.stddev, q_whole.stddev)
    for key in ("lam", "log_eta"):
        assert torch.equal(gather_rows([s.state_dict()[key] for s in shards]), getattr(whole, key))


def test_set_rows_takes_global_ids() -> None:
    shard = LocalGaussian(9, 2, shard=(1, 3))  # the examples 1, 4, 7
    loc = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    q = torch.distributions.Independent(torch.distributions.Normal(loc, torch.ones(2, 2)), 1)
    shard.set_rows(q, torch.tensor([7, 1]))
    assert torch.equal(shard.lam[2], loc[0]) and torch.equal(shard.lam[0], loc[1])
    assert torch.equal(shard.lam[1], torch.zeros(2))  # example 4 untouched


@pytest.mark.parametrize("n, batch, world", [(60, 10, 2), (61, 6, 3), (50, 8, 4)])
def test_each_rank_gets_only_its_examples_once_an_epoch(n: int, batch: int, world: int) -> None:
    x = torch.rand(n, 5)
    ranks = [
        TensorBatches(x, batch, shuffle=True, binarize="none",
                      generator=torch.Generator().manual_seed(3), shard=(r, world),
                      shard_examples=True)
        for r in range(world)
    ]  # fmt: skip
    lengths = {len(b) for b in ranks}
    assert lengths == {(n // world) // (batch // world)}  # the ranks step together
    for _ in range(2):  # two epochs: a new common order each
        epochs = [list(b) for b in ranks]
        for r, steps in enumerate(epochs):
            assert len(steps) == len(ranks[r])
            ids = torch.cat([index for _, index in steps])
            assert (ids % world == r).all()  # its own examples only
            assert ids.unique().numel() == ids.numel()  # each at most once
            assert ids.numel() >= len(range(r, n, world)) - batch // world  # nearly all
            for xb, index in steps:
                assert xb.shape == (batch // world, 5) and torch.equal(xb, x[index])


def test_a_sharded_test_fit_gives_the_rows_of_the_whole_fit() -> None:
    """The test-time E-step of each rank fits only its examples; started from an encoder with
    no steps, the rows equal the whole fit's exactly, looked up by global id."""
    from dgm.build import build_model, build_posterior
    from dgm.config import validate

    config = validate({"model": {"latent_dim": 4, "hidden": [8]}})
    torch.manual_seed(0)
    model, encoder = build_model(config.model, 6), build_posterior(config, 6, 0)
    x = torch.rand(9, 6)
    whole = fit_local_posterior(model, x, steps=0, init=encoder)
    ids = torch.arange(9)
    for r in range(2):
        shard = fit_local_posterior(model, x, steps=0, init=encoder, shard=(r, 2))
        own = ids[ids % 2 == r]
        assert torch.allclose(shard(x[own], own).mean, whole(x[own], own).mean, atol=1e-6)
        assert torch.allclose(shard(x[own], own).stddev, whole(x[own], own).stddev, atol=1e-6)
