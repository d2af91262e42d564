"""Diagnostics on constructed cases whose answer is known."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from actlab.engine import diagnostics
from actlab.engine.diagnostics import (
    findings,
    layer_grad_norms,
    max_slope,
    preact_moments,
    unit_fractions,
)


def stacked_mlp(activation, init: str, depth: int = 10, width: int = 64, members: int = 2):
    """A stacked MLP (weights (K, in, out)) on random data with random labels after one
    backward pass. Returns the weight Parameters and the hidden pre-activations."""
    generator = torch.Generator().manual_seed(0)
    dims = [32] + [width] * depth + [10]
    weights = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True):
        if init == "kaiming":  # He et al. 2015: std sqrt(2 / fan_in), for ReLU
            weight = torch.randn(members, fan_in, fan_out, generator=generator)
            weight *= math.sqrt(2 / fan_in)
        else:  # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            weight = torch.rand(members, fan_in, fan_out, generator=generator) * 2 - 1
            weight /= math.sqrt(fan_in)
        weights.append(nn.Parameter(weight))
    x = torch.randn(members, 256, 32, generator=generator)
    y = torch.randint(0, 10, (256,), generator=generator)
    h, preacts = x, []
    for layer, weight in enumerate(weights):
        h = torch.bmm(h, weight)
        if layer < len(weights) - 1:
            preacts.append(h)
            h = activation(h)
    loss = sum(nn.functional.cross_entropy(h[k], y) for k in range(members))
    loss.backward()
    return weights, preacts


# === gradient norms =======================================================================


def test_layer_grad_norms_equals_per_member_norm():
    weights = [nn.Parameter(torch.randn(3, 5, 4)), nn.Parameter(torch.randn(3, 2, 3, 3))]
    for weight in weights:
        weight.grad = torch.randn_like(weight)
    norms = layer_grad_norms(weights)
    assert norms.shape == (3, 2)
    for k in range(3):
        for layer, weight in enumerate(weights):
            expected = torch.linalg.norm(weight.grad[k].flatten())
            torch.testing.assert_close(norms[k, layer], expected)


def test_layer_grad_norms_bfloat16_gives_float32():
    weight = nn.Parameter(torch.randn(2, 8, 8, dtype=torch.bfloat16))
    weight.grad = torch.ones_like(weight)
    norms = layer_grad_norms([weight])
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms, torch.full((2, 1), 8.0))


def test_layer_grad_norms_without_grad_names_the_layer():
    weights = [nn.Parameter(torch.randn(1, 2, 2)), nn.Parameter(torch.randn(1, 2, 2))]
    weights[0].grad = torch.ones(1, 2, 2)
    with pytest.raises(ValueError, match="weight layer 2"):
        layer_grad_norms(weights)


def test_sigmoid_gradients_vanish_relu_kaiming_do_not():
    sigmoid_weights, _ = stacked_mlp(torch.sigmoid, "pytorch")
    relu_weights, _ = stacked_mlp(torch.relu, "kaiming")
    sigmoid = layer_grad_norms(sigmoid_weights)
    relu = layer_grad_norms(relu_weights)
    sigmoid_ratio = sigmoid[:, 0] / sigmoid[:, -1]
    relu_ratio = relu[:, 0] / relu[:, -1]
    assert (sigmoid_ratio < 1e-3).all(), sigmoid_ratio
    assert (relu_ratio > 0.05).all(), relu_ratio
    # Vanishing is monotone through depth for sigmoid: each layer's gradient is smaller
    # than the next one's.
    assert (sigmoid[:, :-1] < sigmoid[:, 1:]).all()


# === dead and saturated units =============================================================


def negative_bias_preacts(bias: float) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 512, 20, generator=generator)
    weight = torch.randn(1, 20, 50, generator=generator) / math.sqrt(20)
    return [torch.bmm(x, weight) + bias]


def test_relu_with_very_negative_bias_is_all_dead_leaky_relu_is_not():
    preacts = negative_bias_preacts(-100.0)
    dead, saturated = unit_fractions(preacts, [nn.ReLU()])
    assert dead.tolist() == [[1.0]]
    assert saturated.tolist() == [[1.0]]  # f' = 0 everywhere is also saturated
    dead, saturated = unit_fractions(preacts, [nn.LeakyReLU()])
    assert dead.tolist() == [[0.0]]
    # f' = 0.01 is 1% of the max slope: not dead, but saturated by the 5% rule ...
    assert saturated.tolist() == [[1.0]]
    # ... while a slope of 0.2 is not.
    dead, saturated = unit_fractions(preacts, [nn.LeakyReLU(0.2)])
    assert dead.tolist() == [[0.0]] and saturated.tolist() == [[0.0]]


def test_relu_with_zero_bias_is_alive():
    dead, saturated = unit_fractions(negative_bias_preacts(0.0), [nn.ReLU()])
    assert dead.item() == 0.0
    assert saturated.item() == 0.0  # about half the samples are negative, not > 90%


def test_partly_dead_layer_counts_units():
    preact = torch.randn(2, 100, 10)
    preact[0, :, :3] = -torch.rand(100, 3) - 0.1  # member 0: units 0-2 never positive
    dead, _ = unit_fractions([preact], [nn.ReLU(), nn.ReLU()])
    torch.testing.assert_close(dead, torch.tensor([[0.3], [0.0]]))


def test_tanh_saturates_on_large_inputs_not_on_small():
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(1, 256, 40, generator=generator)
    large = z.sign() * (5 + z.abs())  # |z| >= 5: tanh'(z) <= 1.8e-4
    dead, saturated = unit_fractions([large, 0.5 * z], [nn.Tanh()])
    assert saturated.tolist() == [[1.0, 0.0]]
    assert dead.tolist() == [[0.0, 0.0]]  # tanh'(5) is 1.8e-4, above the dead epsilon


def test_sigmoid_is_dead_far_out():
    z = torch.full((1, 8, 4), 30.0)  # sigmoid'(30) = 9e-14
    dead, saturated = unit_fractions([z], [nn.Sigmoid()])
    assert dead.item() == 1.0 and saturated.item() == 1.0


def test_saturation_is_relative_to_max_slope():
    # sigmoid's max slope is 0.25: at z = 3, sigmoid'(3) = 0.045, which is 18% of 0.25
    # (not saturated), though it is below 5% of tanh's slope 1.
    z = torch.full((1, 8, 4), 3.0)
    _, saturated = unit_fractions([z], [nn.Sigmoid()])
    assert saturated.item() == 0.0


def test_members_share_one_call_per_activation_group(monkeypatch):
    calls = []
    original = diagnostics._value_and_slope

    def counting(activation, z):
        calls.append(z.shape)
        return original(activation, z)

    monkeypatch.setattr(diagnostics, "_value_and_slope", counting)
    relu, tanh = nn.ReLU(), nn.Tanh()
    preact = torch.randn(4, 16, 8)
    preact[2] -= 100  # member 2 is a dead ReLU, member 3 (tanh) is not
    max_slope(relu), max_slope(tanh)  # warm the cache: count only the probe calls
    calls.clear()
    dead, _ = unit_fractions([preact], [relu, tanh, nn.ReLU(), tanh])
    assert len(calls) == 2  # ReLU() objects with equal params form one group
    assert dead[:, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_channels_are_units_in_a_cnn():
    preact = torch.randn(1, 4, 3, 5, 5)
    preact[0, :, 1] = -1.0  # channel 1 is negative at every position for every sample
    preact[0, 0, 2] = -1.0  # channel 2 is negative everywhere in sample 0 only
    dead, _ = unit_fractions([preact], [nn.ReLU()])
    torch.testing.assert_close(dead, torch.tensor([[1 / 3]]))


def test_inplace_and_learnable_activations():
    z = torch.randn(2, 32, 6) - 50
    dead, _ = unit_fractions([z], [nn.ReLU(inplace=True), nn.PReLU(6)])
    assert dead.tolist() == [[1.0], [0.0]]
    assert z.max() < 0  # the probe pre-activations are not overwritten


def test_max_slope():
    assert max_slope(nn.Sigmoid()) == pytest.approx(0.25, rel=1e-4)
    assert max_slope(nn.Tanh()) == pytest.approx(1.0, rel=1e-4)
    assert max_slope(nn.LeakyReLU(0.2)) == pytest.approx(1.0)
    prelu = nn.PReLU(init=3.0)  # learnable: its current slope on the negative side
    assert max_slope(prelu) == pytest.approx(3.0)
    with torch.no_grad():
        prelu.weight.fill_(0.5)  # a new value is a new cache entry
    assert max_slope(prelu) == pytest.approx(1.0)


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def test_unbounded_slope_uses_the_identity_slope():
    assert max_slope(Exp()) == 1.0
    # exp'(z) = exp(z) < 0.05 for z < -3: saturated there, not for z around 0.
    _, saturated = unit_fractions([torch.full((1, 4, 3), -4.0), torch.zeros(1, 4, 3)], [Exp()])
    assert saturated.tolist() == [[1.0, 0.0]]


def test_preact_moments():
    z = torch.stack([torch.full((10, 4), 2.0), torch.arange(40.0).view(10, 4)])
    mean, std = preact_moments([z, -z])
    torch.testing.assert_close(mean, torch.tensor([[2.0, -2.0], [19.5, -19.5]]))
    expected = torch.arange(40.0).std(correction=0)
    torch.testing.assert_close(std, torch.tensor([[0.0, 0.0], [expected, expected]]))


def test_shape_changing_activation_is_refused():
    with pytest.raises(ValueError, match="shape-preserving"):
        unit_fractions([torch.randn(1, 4, 6)], [nn.GLU()])


# === findings =============================================================================


def diagnostics_frame(rows: list[dict]) -> pd.DataFrame:
    base = {"depth": None, "member": 0, "lr": 1e-3, "probe_grad_norm": float("nan")}
    base |= {"preact_mean": 0.0, "preact_std": 1.0}
    return pd.DataFrame([base | row for row in rows])


def test_findings_vanishing_gradient_sentence_averages_seeds():
    rows = []
    for seed, first in ((0, 0.02), (1, 0.04)):
        for activation, layer1 in (("sigmoid", first), ("relu", 0.5)):
            for layer, norm in ((1, layer1), (2, 0.3), (3, 1.0)):
                rows.append(
                    {
                        "activation": activation,
                        "seed": seed,
                        "epoch": 1,
                        "layer": layer,
                        "grad_norm": norm,
                        "dead_frac": 0.0 if layer < 3 else None,
                        "saturated_frac": 0.0 if layer < 3 else None,
                    }
                )
    sentences = findings(diagnostics_frame(rows))
    assert sentences == [
        "layer-1 / layer-3 gradient norm at epoch 1: sigmoid 0.03x, relu 0.5x",
        "sigmoid: layer-1 gradient is 0.03x layer-3's at epoch 1 (vanishing gradients)",
    ]


def test_findings_dead_and_saturated_sentences():
    rows = []
    for epoch in (1, 10):
        for activation, dead, saturated in (
            ("relu", 0.12, 0.15),
            ("leaky_relu", 0.0, 0.0),
            ("tanh", 0.0, 0.45 if epoch == 1 else 0.35),
        ):
            for layer in (1, 2):
                rows.append(
                    {
                        "activation": activation,
                        "seed": 0,
                        "epoch": epoch,
                        "layer": layer,
                        "grad_norm": 1.0,
                        "dead_frac": dead if (layer == 2 and epoch == 10) else 0.0,
                        "saturated_frac": saturated if layer == 1 else 0.0,
                    }
                )
    sentences = findings(diagnostics_frame(rows))
    assert "relu: 12% of layer-2 units are dead at epoch 10; leaky_relu: 0%" in sentences
    # the last epoch, as the dead-unit sentence (not epoch 1's peak of 45%)
    assert "tanh: 35% of layer-1 units saturated at epoch 10" in sentences
    assert not any(sentence.startswith("leaky_relu") for sentence in sentences)
    assert (
        sentences[0]
        == "layer-1 / layer-2 gradient norm at epoch 1: leaky_relu 1x, relu 1x, tanh 1x"
    )
    assert len(sentences) == 3  # relu's 15% saturation is under the 20% threshold


def test_findings_qualify_depths_and_report_divergence():
    rows = []
    for depth, first in ((2, 0.5), (8, 0.001)):
        for layer in range(1, depth + 2):
            rows.append(
                {
                    "depth": depth,
                    "activation": "sigmoid",
                    "seed": 0,
                    "epoch": 1,
                    "layer": layer,
                    "grad_norm": first if layer == 1 else 1.0,
                    "dead_frac": 0.0,
                    "saturated_frac": 0.0,
                }
            )
    metrics = pd.DataFrame(
        [
            {
                "depth": 8,
                "activation": "relu",
                "seed": 1,
                "lr": 0.1,
                "epoch": 3,
                "status": "diverged",
            },
            {"depth": 8, "activation": "relu", "seed": 0, "lr": 0.1, "epoch": 3, "status": "ok"},
        ]
    )
    sentences = findings(diagnostics_frame(rows), metrics)
    assert sentences == [
        "sigmoid (depth 8): layer-1 gradient is 1.0e-03x layer-9's at epoch 1 (vanishing gradients)",
        "relu (seed 1, lr=0.1, depth 8): diverged (loss NaN/inf) at epoch 3",
    ]


def test_findings_on_nothing_notable_is_empty():
    rows = [
        {"activation": "relu", "seed": 0, "epoch": 1, "layer": layer, "grad_norm": 1.0}
        | {"dead_frac": 0.01, "saturated_frac": 0.02}
        for layer in (1, 2)
    ]
    assert findings(diagnostics_frame(rows)) == []
    assert findings(diagnostics_frame([]).iloc[0:0]) == []


def test_findings_on_a_real_stacked_mlp():
    """From tensors to sentences: the 10-layer sigmoid MLP is flagged, ReLU+Kaiming is not."""
    rows = []
    for activation, init in (("sigmoid", "pytorch"), ("relu", "kaiming")):
        function = torch.sigmoid if activation == "sigmoid" else torch.relu
        module = nn.Sigmoid() if activation == "sigmoid" else nn.ReLU()
        weights, preacts = stacked_mlp(function, init, members=1)
        norms = layer_grad_norms(weights)[0]
        dead, saturated = unit_fractions(preacts, [module])
        for layer in range(len(weights)):
            hidden = layer < len(preacts)
            rows.append(
                {
                    "activation": activation,
                    "seed": 0,
                    "epoch": 1,
                    "layer": layer + 1,
                    "grad_norm": norms[layer].item(),
                    "dead_frac": dead[0, layer].item() if hidden else None,
                    "saturated_frac": saturated[0, layer].item() if hidden else None,
                }
            )
    sentences = findings(diagnostics_frame(rows))
    gradient = [sentence for sentence in sentences if "gradient is" in sentence]
    assert len(gradient) == 1
    assert gradient[0].startswith("sigmoid: layer-1 gradient is ")
    assert gradient[0].endswith("layer-11's at epoch 1 (vanishing gradients)")
    # A deep bias-free ReLU net has some dead units already at init (Lu et al. 2019);
    # whatever is said about them is about relu only.
    assert sentences[0].startswith("layer-1 / layer-11 gradient norm at epoch 1: sigmoid ")
    assert all(s.startswith(("sigmoid:", "relu:")) for s in sentences[1:])


def test_findings_exploding_gradient():
    rows = [
        {"activation": "selu", "seed": 0, "epoch": 1, "layer": layer, "grad_norm": norm}
        | {"dead_frac": 0.0, "saturated_frac": 0.0}
        for layer, norm in ((1, 50.0), (2, 1.0))
    ]
    assert findings(diagnostics_frame(rows)) == [
        "selu: layer-1 gradient is 50x layer-2's at epoch 1 (exploding gradients)"
    ]


def test_every_elementwise_catalog_activation_is_diagnosable():
    from actlab.catalog import registry as catalog

    entries = [entry for entry in catalog.list_activations() if entry.elementwise]
    modules = [catalog.get(entry.example) for entry in entries]
    generator = torch.Generator().manual_seed(3)
    preacts = [torch.randn(len(modules), 64, 16, generator=generator) * 4]
    dead, saturated = unit_fractions(preacts, modules)
    assert dead.shape == saturated.shape == (len(modules), 1)
    assert ((dead >= 0) & (dead <= 1) & (saturated >= 0) & (saturated <= 1)).all()
    for entry, module in zip(entries, modules, strict=True):
        assert 0 < max_slope(module) < 10, entry.name
