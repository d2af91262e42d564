"""A unit of the diagnostics is one neuron (one output feature of the layer that produced
the activation's input), whatever the layout: a transformer FFN's hidden feature on
(B, T, F) or (T, B, F), a channels-last block's channel on (B, H, W, C), a conv's channel
on (B, C, H, W). Before, dim 2 of every captured input was taken as the units: on (B, T, F)
they were the T positions, on (T, B, F) the B samples. Oracles: each member's own forward
with its own modules, the dead units counted by hand."""

from __future__ import annotations

import textwrap
import warnings

import pytest
import torch
from torch import nn

from actlab.config import ExperimentConfig
from actlab.engine import probe, unit_axes
from actlab.engine.batches import DeviceData
from actlab.engine.trainer import Trainer
from actlab.errors import ModelNotice

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Encoder(nn.Module):
        '''Rows of the 4x4 image as 4 tokens; one transformer encoder layer (FFN 8 -> 16).'''

        def __init__(self, batch_first=True):
            super().__init__()
            self.batch_first = batch_first
            self.embed = nn.Linear(4, 8)
            self.layer = nn.TransformerEncoderLayer(
                8, 2, dim_feedforward=16, dropout=0.0, batch_first=batch_first
            )
            self.out = nn.Linear(8, 4)

        def forward(self, x):
            h = self.embed(x.flatten(1, 2))  # (B, T, 8)
            if not self.batch_first:
                return self.out(self.layer(h.transpose(0, 1)).mean(0))  # (T, B, 8) inside
            return self.out(self.layer(h).mean(1))


    def time_first():
        return Encoder(batch_first=False)


    class GatedFFN(nn.Module):
        '''A builder's FFN on (B, T, 8): Linear(8, 2 x 8) -> act() (gated: a * gate(b)).'''

        def __init__(self, act):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.ffn = nn.Sequential(nn.Linear(8, act.inputs(8)), act(), nn.Linear(8, 8))
            self.out = nn.Linear(8, 4)

        def forward(self, x):
            return self.out(self.ffn(self.embed(x.flatten(1, 2))).mean(1))


    def gated_ffn(act):
        return GatedFFN(act)


    class ChannelsLast(nn.Module):
        '''ConvNeXt-style: conv, then LayerNorm and an FFN on (B, H, W, C).'''

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 1)
            self.norm = nn.LayerNorm(8)
            self.pw1, self.act, self.pw2 = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)
            self.out = nn.Linear(8, 4)

        def forward(self, x):
            h = self.norm(self.conv(x).permute(0, 2, 3, 1))
            return self.out(self.pw2(self.act(self.pw1(h))).mean((1, 2)))


    class SharedCNN(nn.Module):
        '''One ReLU module after two convs of 4 and 8 channels.'''

        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
            self.act = nn.ReLU()
            self.out = nn.Linear(8, 4)

        def forward(self, x):
            return self.out(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


    def cnn():
        return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(96, 4))


    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


    class Reshaped(nn.Module):
        '''relu on a Linear's 32 outputs viewed as (4, 8): units undetermined.'''

        def __init__(self):
            super().__init__()
            self.fc, self.act, self.out = nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)

        def forward(self, x):
            return self.out(self.act(self.fc(x.flatten(1)).view(-1, 4, 8)).flatten(1))
    """
)


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "unit_nets.py"
    path.write_text(NETS)
    return path


def data(n: int = 48) -> DeviceData:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(n, 1, 4, 4, generator=generator)
    y = torch.randint(0, 4, (n,), generator=generator)
    empty = torch.zeros(0, 1, 4, 4)
    return DeviceData(x, y, empty, torch.zeros(0, dtype=torch.long), x[:8], y[:8], 4, (1, 4, 4))


def probe_with_dead(nets, name: str, bias: str, dead: slice, activation: str = "relu"):
    """Member 0's probe after forcing the units `dead` of `bias` off (bias -50: the layer's
    output is far below 0 for every sample and position), and the member's own module."""
    config = ExperimentConfig(model=f"{nets}:{name}", activations=(activation,), seeds=(0,),
                              epochs=1, batch_size=8, stacking="loop")  # fmt: skip
    trainer = Trainer(config, data())
    group = trainer.model.groups[0]
    with torch.no_grad():
        group.params[group.param_names.index(bias)][0, dead] = -50.0
    x, y = trainer.data.x_train[:32], trainer.data.y_train[:32]
    out = trainer.model.probe(x, y)
    return out, group, x


def hand_dead(group, x, producer: str, unit_dim: int, f=torch.relu, gate=False) -> float:
    return hand_measures(group, x, producer, unit_dim, f, gate)[0]


def hand_measures(group, x, producer: str, unit_dim: int, f=torch.relu, gate=False):
    """Fractions of the producer's output features z (dead, saturated): dead where f(z) = 0,
    or |f'(z)| < 1e-6 (by autograd), at every sample and position; saturated where
    |f'(z)| < 0.05 (5% of relu's steepest slope, 1) at more than 90% of them. z is taken by a
    hook on member 0's module (functional_call swaps the stacked member 0's weights in)."""
    from torch.func import functional_call

    outputs = []
    module = dict(group.base.named_modules())[producer]
    handle = module.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach()))
    params, buffers = group.state()
    with torch.no_grad():
        functional_call(
            group.base.eval(), ({n: p[0] for n, p in params.items()},
                                {n: b[0] for n, b in buffers.items()}), (x,)
        )  # fmt: skip
    handle.remove()
    (h,) = outputs
    if gate:  # [a, b]: the gate's input b
        h = h.chunk(2, dim=-1)[1]
    z = h.movedim(unit_dim, 0).flatten(1).requires_grad_(True)
    (slope,) = torch.autograd.grad(f(z).sum(), z)
    dead = (f(z) == 0).all(dim=1) | (slope.abs() < 1e-6).all(dim=1)
    saturated = (slope.abs() < 0.05).float().mean(dim=1) > 0.9
    return dead.float().mean().item(), saturated.float().mean().item()


def test_a_transformer_ffn_unit_is_a_hidden_feature_batch_first(nets):
    """Before: the 4 tokens were the units, none dead (reported 0)."""
    out, group, x = probe_with_dead(nets, "Encoder", "layer.linear1.bias", slice(0, 5))
    assert out["dead_frac"][0, 0].item() == pytest.approx(5 / 16)
    dead, saturated = hand_measures(group, x, "layer.linear1", -1)
    assert dead == pytest.approx(5 / 16)
    assert out["saturated_frac"][0, 0].item() == pytest.approx(saturated)


def test_a_transformer_ffn_unit_is_a_hidden_feature_time_first(nets):
    """(T, B, F) inside the layer: before, dim 2 held the 32 probe samples as units."""
    out, group, x = probe_with_dead(nets, "time_first", "layer.linear1.bias", slice(3, 10))
    assert out["dead_frac"][0, 0].item() == pytest.approx(7 / 16)
    assert hand_dead(group, x, "layer.linear1", -1) == pytest.approx(7 / 16)


def test_a_gated_ffn_unit_on_tokens_is_a_hidden_feature(nets):
    """swiglu = a * silu(b) on (B, T, 2 x 8): a unit is dead where its gate b is (silu's
    slope at -50 is ~1e-20). Before, the 4 tokens were the units."""
    out, group, x = probe_with_dead(nets, "gated_ffn", "ffn.0.bias", slice(8 + 2, 8 + 5), "swiglu")
    assert out["dead_frac"][0, 0].item() == pytest.approx(3 / 8)
    assert hand_dead(group, x, "ffn.0", -1, torch.nn.functional.silu, gate=True) == 3 / 8


def test_a_channels_last_ffn_unit_is_a_channel(nets):
    """Linear on (B, H, W, C); gelu is never exactly 0, its slope is < 1e-6 below z = -7."""
    out, group, x = probe_with_dead(nets, "ChannelsLast", "pw1.bias", slice(0, 6), "gelu")
    assert out["dead_frac"][0, 0].item() == pytest.approx(6 / 16)
    assert hand_dead(group, x, "pw1", -1, torch.nn.functional.gelu) == pytest.approx(6 / 16)


def test_a_cnn_and_an_mlp_keep_their_units(nets):
    """Passed before too: a Linear's features on (B, F), a conv's channels on (B, C, H, W)."""
    out, group, x = probe_with_dead(nets, "mlp", "1.bias", slice(0, 3))
    assert out["dead_frac"][0, 0].item() == pytest.approx(hand_dead(group, x, "1", 1))
    assert out["dead_frac"][0, 0].item() >= 3 / 12
    out, group, x = probe_with_dead(nets, "cnn", "0.bias", slice(0, 2))
    assert out["dead_frac"][0, 0].item() == pytest.approx(hand_dead(group, x, "0", 1))
    assert out["dead_frac"][0, 0].item() >= 2 / 6


def test_a_module_reused_at_two_widths_has_the_channels_of_both(nets):
    """Before, calls of different shapes made every position of every call a unit."""
    out, group, x = probe_with_dead(nets, "SharedCNN", "c2.bias", slice(0, 2))
    dead = hand_dead(group, x, "c1", 1) * 4 + hand_dead(group, x, "c2", 1) * 8
    assert out["dead_frac"][0, 0].item() == pytest.approx(dead / 12)
    assert dead >= 2


def test_undetermined_units_get_no_number_and_one_notice(nets):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, _, _ = probe_with_dead(nets, "Reshaped", "fc.bias", slice(0, 1))
    assert torch.isnan(out["dead_frac"][0, 0]) and torch.isnan(out["saturated_frac"][0, 0])
    assert torch.isfinite(out["preact_mean"][0, 0])
    diag = {name: value.tolist() for name, value in out.items()}
    diag["grad_norm"] = diag["probe_grad_norm"]
    (row, *_) = probe.diagnostics_rows({"member": 0}, diag, 0)
    assert "dead_frac" not in row and "saturated_frac" not in row  # empty in diagnostics.csv
    assert row["preact_mean"] == pytest.approx(diag["preact_mean"][0][0])
    said = [w for w in caught if issubclass(w.category, ModelNotice) and "units" in str(w.message)]
    assert len(said) == 1 and "'act'" in str(said[0].message)


@pytest.mark.parametrize(
    ("shape", "producer", "axis"),
    [
        ((12,), nn.Linear(4, 12), 0),
        ((5, 12), nn.Linear(4, 12), 1),  # (B, T, F)
        ((12, 5), nn.Linear(4, 12), 0),  # transposed after the Linear: size decides
        ((8, 3, 3), nn.Conv2d(1, 8, 1), 0),
        ((3, 3, 8), nn.Conv2d(1, 8, 1), 2),  # permuted to channels last
        ((8, 5), nn.BatchNorm1d(8), 0),
        ((5, 8), nn.LayerNorm(8), 1),
        ((5, 8), nn.MultiheadAttention(8, 2), 1),  # unknown kind: its embed_dim
        ((8, 8), nn.MultiheadAttention(8, 2), None),  # both dims have its width
        ((4, 8), nn.Linear(16, 32), None),  # a reshape in between
        ((4, 8), None, None),  # nothing with parameters before it
        ((4, 8), None, None),
    ],
)
def test_unit_axis_rules(shape, producer, axis):
    assert unit_axes.unit_axis(shape, producer) == axis


def test_a_resized_input_keeps_only_the_producers_own_dim():
    """relu(max_pool(conv(x))): the channels stay on dim 1; a LayerNorm(8) before a
    projection done without a module to 32 features on (T=8, 32): not the 8 tokens."""
    assert unit_axes.unit_axis((8, 2, 2), nn.Conv2d(1, 8, 3), resized=True) == 0
    assert unit_axes.unit_axis((8, 32), nn.LayerNorm(8), resized=True) is None
    assert unit_axes.unit_axis((8, 32), nn.LayerNorm(8)) == 0  # same size: a transpose


def test_a_gated_unit_is_on_the_last_dim():
    assert unit_axes.unit_axis((5, 12), nn.Conv1d(1, 5, 1), gated=True) == 1
