"""FusedAdam is torch's fused Adam, step for step; nonfinite_gradients finds every NaN and inf."""

import copy

import pytest
import torch

from dgm.methods.optim import FusedAdam, nonfinite_gradients


def _problem(seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return net, torch.randn(16, 5)


def _train(net, opt, x, steps, lr_at=lambda i: 1e-2):
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(i)  # the IWAE stairs change the rate between steps
        loss = net(x).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_same_trajectory_and_state_as_torch_fused_adam():
    ours, x = _problem(0)
    theirs, _ = _problem(0)
    kwargs = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-4}
    opt_ours = FusedAdam(ours.parameters(), **kwargs)
    opt_theirs = torch.optim.Adam(theirs.parameters(), fused=True, **kwargs)
    lr_at = lambda i: 1e-2 * 10 ** (-(i // 10) / 7)  # noqa: E731
    _train(ours, opt_ours, x, 30, lr_at)
    _train(theirs, opt_theirs, x, 30, lr_at)
    assert opt_ours.fast_path  # the fast path ran
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    mine, torch_state = opt_ours.state_dict(), opt_theirs.state_dict()
    assert mine["param_groups"] == torch_state["param_groups"]
    for i, s in torch_state["state"].items():
        for key, value in s.items():
            torch.testing.assert_close(mine["state"][i][key], value, rtol=0, atol=0)


def test_state_dict_round_trip_continues_exactly():
    """A checkpoint written by torch.optim.Adam resumes in FusedAdam (and goes on alike)."""
    a, x = _problem(1)
    b, _ = _problem(1)
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    _train(a, opt_a, x, 5)
    b.load_state_dict(a.state_dict())
    opt_b = FusedAdam(b.parameters(), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a checkpoint
    _train(a, opt_a, x, 5)
    _train(b, opt_b, x, 5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_parameter_without_gradient_is_left_alone():
    net, x = _problem(2)
    extra = torch.nn.Parameter(torch.ones(3))
    opt = FusedAdam([*net.parameters(), extra], lr=1e-2)
    _train(net, opt, x, 3)  # extra never gets a gradient
    assert torch.equal(extra, torch.ones(3))
    assert "exp_avg" not in opt.state[extra]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradients_flags_any_bad_entry(bad):
    grads = [torch.randn(4, 3), torch.randn(5)]
    found = torch.zeros(())
    assert nonfinite_gradients(grads, found).item() == 0.0
    before = [g.clone() for g in grads]
    grads[1][3] = bad
    assert nonfinite_gradients(grads, found).item() == 1.0
    grads[1][3] = 0.5
    assert nonfinite_gradients(grads, found).item() == 0.0  # reset on every call
    assert torch.equal(grads[0], before[0])  # the check does not change the gradients
    assert nonfinite_gradients([], found).item() == 0.0


def test_options_changed_later_and_new_groups_are_honoured():
    """The cached lists never hide a change: weight decay switched on after some steps, and a
    parameter group added later, train as torch's Adam does."""
    ours, x = _problem(3)
    theirs, _ = _problem(3)
    head_ours, head_theirs = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    head_theirs.load_state_dict(head_ours.state_dict())
    opt_ours = FusedAdam(ours.parameters(), lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True)
    for opt, net, head in ((opt_ours, ours, head_ours), (opt_theirs, theirs, head_theirs)):
        _train(net, opt, x, 3)
        opt.param_groups[0]["weight_decay"] = 0.1
        _train(net, opt, x, 3)
        opt.add_param_group({"params": head.parameters()})
        _train(torch.nn.Sequential(net, head), opt, x, 3)
    for p, q in zip(
        [*ours.parameters(), *head_ours.parameters()],
        [*theirs.parameters(), *head_theirs.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("fast_path", [False, True])
def test_found_inf_skips_the_step_on_the_device(fast_path):
    """step(found_inf=1.0) leaves parameters, moments and step counters as they were (the
    kernel skips; the counters are put back); found_inf=0.0 is an ordinary step. Before the
    state exists (no fast path yet) the flag is read on the host, with the same outcome."""
    net, x = _problem(0)
    opt = FusedAdam(net.parameters(), lr=1e-2)
    if fast_path:
        _train(net, opt, x, 2)
    before_params = [p.detach().clone() for p in net.parameters()]
    before_state = copy.deepcopy(opt.state_dict())
    net(x).pow(2).sum().backward()
    opt.step(found_inf=torch.ones(()))
    assert opt.fast_path == fast_path
    for p, q in zip(net.parameters(), before_params, strict=True):
        assert torch.equal(p, q)
    after_state = opt.state_dict()
    assert after_state["state"].keys() == before_state["state"].keys()
    for i, s in before_state["state"].items():
        for key, value in s.items():
            assert torch.equal(after_state["state"][i][key], value), key
    reference = copy.deepcopy(net), copy.deepcopy(opt.state_dict())
    opt.step(found_inf=torch.zeros(()))  # the same gradients, now applied
    ref_net, ref_state = reference
    ref_opt = FusedAdam(ref_net.parameters(), lr=1e-2)
    ref_opt.load_state_dict(ref_state)
    for p, q in zip(ref_net.parameters(), net.parameters(), strict=True):
        p.grad = q.grad.clone()
    ref_opt.step()
    for p, q in zip(net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not any(torch.equal(p, q) for p, q in zip(net.parameters(), before_params, strict=True))


def test_zero_grad_clears_every_group_as_torchs_does():
    """The lean ``zero_grad`` leaves what torch's would: no gradient (set_to_none, the default),
    or zeros in place (set_to_none=False), in every parameter group."""
    net, x = _problem(2)
    first, second = list(net.parameters())[:2], list(net.parameters())[2:]
    opt = FusedAdam([{"params": first}, {"params": second, "lr": 1e-3}])
    for set_to_none in (False, True):
        net(x).pow(2).sum().backward()
        buffers = [p.grad for p in net.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in buffers)
        opt.zero_grad(set_to_none=set_to_none)
        for p, g in zip(net.parameters(), buffers, strict=True):
            if set_to_none:
                assert p.grad is None
            else:  # the same buffer, zeroed
                assert p.grad is g and not g.any()
