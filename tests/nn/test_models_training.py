"""Oracle: the stacked model + StackedOptimizer trains exactly like K plain modules, each
with its own torch.optim.Adam, trained one by one on the same batches (and the same
dropout masks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actlab.config import ExperimentConfig, members_for
from actlab.nn.models import build_model
from actlab.nn.optim import StackedOptimizer, zero_grad

STEPS = 50


pytestmark = pytest.mark.usefixtures("one_thread")


class MaskSlot(nn.Module):
    """Inverted dropout whose mask (already scaled by 1/(1-p)) is set before each step."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, x):
        return x * self.mask


def train_both(config: ExperimentConfig, shape: tuple[int, int, int], batch: int = 8):
    members = members_for(config)
    model = build_model(config, members, shape, 10)
    K, S = model.num_members, model.num_seeds
    per_seed = K // S
    masks: list[torch.Tensor] = []
    draw = model._dropout_mask

    def recording(*args, **kwargs):
        mask = draw(*args, **kwargs)
        masks.append(mask)
        return mask

    model._dropout_mask = recording

    plains, slots, optimizers = [], [], []
    for k, member in enumerate(members):
        plain = model.export_member(k)
        member_slots = []
        for i, module in enumerate(plain):
            if isinstance(module, nn.Dropout):
                plain[i] = MaskSlot()
                member_slots.append(plain[i])
        plains.append(plain)
        slots.append(member_slots)
        optimizers.append(torch.optim.Adam(plain.parameters(), lr=member.lr))

    param_members = model.parameter_members()
    optimizer = StackedOptimizer(param_members, [m.lr for m in members], kind="adam")
    params = [p for p, _ in param_members]
    generator = torch.Generator().manual_seed(123)
    stacked_losses, plain_losses = [], []
    for _ in range(STEPS):
        x = torch.rand((S, batch, *shape), generator=generator)
        y = torch.randint(0, 10, (S, batch), generator=generator)
        masks.clear()
        zero_grad(params)
        logits = model(x)
        losses = torch.stack([F.cross_entropy(logits[k], y[k // per_seed]) for k in range(K)])
        losses.sum().backward()
        optimizer.step()
        stacked_losses.append(losses.detach())

        step_losses = []
        for k, (plain, opt) in enumerate(zip(plains, optimizers, strict=True)):
            for slot, mask in zip(slots[k], masks, strict=True):
                slot.mask = mask[k]
            s = k // per_seed
            opt.zero_grad()
            loss = F.cross_entropy(plain(x[s]), y[s])
            loss.backward()
            opt.step()
            step_losses.append(loss.detach())
        plain_losses.append(torch.stack(step_losses))
    return model, plains, torch.stack(stacked_losses), torch.stack(plain_losses)


def assert_same_training(model, plains, stacked_losses, plain_losses):
    assert torch.isfinite(stacked_losses).all()
    # Training did something: the losses moved.
    assert (stacked_losses[0] - stacked_losses[-1]).abs().max() > 1e-3
    torch.testing.assert_close(stacked_losses, plain_losses, rtol=1e-4, atol=1e-5)
    for k, plain in enumerate(plains):
        exported = model.export_member(k)
        exported_params = [
            p for m in exported if not isinstance(m, nn.Dropout) for p in m.parameters()
        ]
        plain_params = [p for m in plain if not isinstance(m, MaskSlot) for p in m.parameters()]
        assert len(exported_params) == len(plain_params)
        for a, b in zip(exported_params, plain_params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mlp_with_dropout_trains_like_plain_modules():
    config = ExperimentConfig(
        hidden=(24, 16),
        dropout=0.2,
        activations=("tanh", "prelu"),
        seeds=(0, 1),
        lrs=(1e-3, 3e-3),
    )
    assert_same_training(*train_both(config, (1, 6, 6)))


def test_cnn_trains_like_plain_modules():
    config = ExperimentConfig(
        model="cnn",
        hidden=(16,),
        dropout=0.2,
        activations=("relu", "swish_beta"),
        seeds=(0, 1),
    )
    assert_same_training(*train_both(config, (1, 8, 8)))
