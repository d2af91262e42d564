"""The stacked optimizer against torch.optim: K members with their own lr each must follow
exactly what K separate torch.optim optimizers do on the same gradients."""

import pytest
import torch

from actlab.nn.optim import FLUSH_EVERY, StackedOptimizer

K = 3
LRS = (1e-3, 3e-3, 1e-2)


def make_params(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(K, 5, 4, generator=gen))
    bias = torch.nn.Parameter(torch.randn(K, 4, generator=gen))
    slope = torch.nn.Parameter(torch.randn(2, generator=gen))  # owned by member 1
    return weight, bias, slope


def torch_optimizer(kind: str, params, lr: float, weight_decay: float):
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd", "adam-foreach", "adamw-foreach"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_matches_torch_optim_per_member(kind, weight_decay):
    kind, _, path = kind.partition("-")
    weight, bias, slope = make_params()
    plain = [
        [
            torch.nn.Parameter(weight[k].detach().clone()),
            torch.nn.Parameter(bias[k].detach().clone()),
        ]
        for k in range(K)
    ]
    plain_slope = torch.nn.Parameter(slope.detach().clone())
    plain[1].append(plain_slope)
    plain_opts = [torch_optimizer(kind, plain[k], LRS[k], weight_decay) for k in range(K)]
    stacked = StackedOptimizer(
        [(weight, None), (bias, None), (slope, 1)], LRS, kind=kind, weight_decay=weight_decay
    )
    if path == "foreach":  # the fallback without torch's fused Adam kernel
        stacked.fused = False
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        gw, gb, gs = (torch.randn(p.shape, generator=gen) for p in (weight, bias, slope))
        weight.grad, bias.grad, slope.grad = gw.clone(), gb.clone(), gs.clone()
        stacked.step()
        for k in range(K):
            plain[k][0].grad = gw[k].clone()
            plain[k][1].grad = gb[k].clone()
            if k == 1:
                plain_slope.grad = gs.clone()
            plain_opts[k].step()
    for k in range(K):
        torch.testing.assert_close(weight[k].detach(), plain[k][0].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bias[k].detach(), plain[k][1].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slope.detach(), plain_slope.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_frozen_member_does_not_change_even_with_nan_gradients(kind):
    weight, bias, slope = make_params()
    opt = StackedOptimizer(
        [(weight, None), (bias, None), (slope, 1)], LRS, kind=kind, weight_decay=0.1
    )
    gen = torch.Generator().manual_seed(2)
    for p in (weight, bias, slope):
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    opt.freeze([1])
    before = [p.detach().clone() for p in (weight, bias, slope)]
    for _ in range(3):
        for p in (weight, bias, slope):
            p.grad = torch.randn(p.shape, generator=gen)
        weight.grad[1] = float("nan")
        slope.grad[:] = float("inf")
        opt.step()
    assert torch.equal(weight[1], before[0][1]) and torch.equal(bias[1], before[1][1])
    assert torch.equal(slope.detach(), before[2])
    assert not torch.equal(weight[0], before[0][0])  # the others go on
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    for states in (opt.exp_avg, opt.exp_avg_sq, opt.momentum_buffer):
        if states:  # stacked weight, stacked bias, member 1's slope
            assert not states[0][1].any() and not states[1][1].any() and not states[2].any()
    assert opt.frozen() == [1]


def test_state_dict_round_trip_continues_identically():
    def run(split: bool):
        weight, bias, slope = make_params()
        params = [(weight, None), (bias, None), (slope, 1)]
        opt = StackedOptimizer(params, LRS, kind="adam")
        gen = torch.Generator().manual_seed(3)
        for step in range(10):
            if split and step == 5:
                state = opt.state_dict()
                opt = StackedOptimizer(params, LRS, kind="adam")
                opt.load_state_dict(state)
            for p in (weight, bias, slope):
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return weight.detach().clone()

    assert torch.equal(run(False), run(True))


def test_on_device_alive_mask_skips_members_for_one_step():
    weight, bias, slope = make_params()
    opt = StackedOptimizer([(weight, None), (bias, None), (slope, 1)], LRS, kind="adam")
    before = weight.detach().clone()
    for p in (weight, bias, slope):
        p.grad = torch.ones_like(p)
    weight.grad[2] = float("nan")
    opt.step(alive=torch.tensor([True, True, False]))
    assert torch.equal(weight[2], before[2]) and not torch.equal(weight[0], before[0])
    assert torch.isfinite(opt.exp_avg[0]).all()


def denormal_count(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_near_denormal_state_is_flushed_and_the_weights_still_follow_torch_optim(kind):
    """A weight whose gradient turns 0 (a dead unit) leaves its first moment decaying into
    the denormal range, where every x86 operation on it is 10-100x slower: the stacked
    optimizer sets such state to 0 every FLUSH_EVERY steps, without moving any weight."""
    weight = torch.nn.Parameter(torch.randn(K, 5, 4, generator=torch.Generator().manual_seed(4)))
    plain = [torch.nn.Parameter(weight[k].detach().clone()) for k in range(K)]
    plain_opts = [torch_optimizer(kind, [plain[k]], LRS[k], 0.0) for k in range(K)]
    stacked = StackedOptimizer([(weight, None)], LRS, kind=kind)
    gen = torch.Generator().manual_seed(5)
    steps = 4 * FLUSH_EVERY
    for step in range(steps):
        grad = torch.randn(weight.shape, generator=gen)
        grad[:, 0] = 1e-20 if step == 0 else 0.0  # row 0 of every member: dead after step 1
        weight.grad = grad.clone()
        stacked.step()
        for k in range(K):
            plain[k].grad = grad[k].clone()
            plain_opts[k].step()
    states = stacked.exp_avg + stacked.exp_avg_sq + stacked.momentum_buffer
    plain_states = [t for opt in plain_opts for s in opt.state.values() for t in s.values()]
    assert sum(denormal_count(t) for t in plain_states if t.is_floating_point()) > 0
    assert sum(denormal_count(t) for t in states) == 0
    for state in states:
        assert not state[:, 0].any()  # flushed to exactly 0
    for k in range(K):
        torch.testing.assert_close(weight[k].detach(), plain[k].detach(), rtol=1e-5, atol=1e-6)
