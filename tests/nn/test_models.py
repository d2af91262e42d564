"""The stacked models against K plain modules: forward logits and every gradient.

Oracle: ``export_member(k)`` (a plain nn.Sequential with member k's weights) and, for
init="pytorch", plain modules built independently after ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actlab.config import ExperimentConfig, check_output_activation, members_for
from actlab.errors import ConfigError
from actlab.nn.models import build_model

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


RTOL = 1e-4


def make_batch(S: int, B: int, shape: tuple[int, int, int], classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((S, B, *shape), generator=g)
    y = torch.randint(0, classes, (S, B), generator=g)
    return x, y


def build(config: ExperimentConfig, shape=(1, 6, 6), classes=10, depth=None):
    members = members_for(config, depth)
    return build_model(config, members, shape, classes, depth=depth), members


def trainable_modules(plain: nn.Module) -> list[nn.Module]:
    return [m for m in plain if isinstance(m, nn.Linear | nn.Conv2d)]


def check_against_plain(model, x, y, plains=None):
    """Stacked logits and gradients equal those of each member's plain module."""
    K, S = model.num_members, model.num_seeds
    per_seed = K // S
    if plains is None:
        plains = [model.export_member(k) for k in range(K)]
    for p in model.parameters():
        p.grad = None
    logits = model(x)
    assert logits.shape == (K, x.shape[1], model.num_classes)
    loss = sum(F.cross_entropy(logits[k], y[k // per_seed]) for k in range(K))
    loss.backward()
    learnable = dict()
    for p, owner in model.parameter_members():
        if owner is not None:
            learnable.setdefault(owner, []).append(p)
    for k, plain in enumerate(plains):
        s = k // per_seed
        plain_logits = plain(x[s])
        torch.testing.assert_close(logits[k], plain_logits, atol=ATOL, rtol=RTOL)
        F.cross_entropy(plain_logits, y[s]).backward()
        for layer, module in enumerate(trainable_modules(plain)):
            torch.testing.assert_close(
                model.weights[layer].grad[k], module.weight.grad, atol=ATOL, rtol=RTOL
            )
            torch.testing.assert_close(
                model.biases[layer].grad[k], module.bias.grad, atol=ATOL, rtol=RTOL
            )
        act_params = [
            p for m in plain if not isinstance(m, nn.Linear | nn.Conv2d) for p in m.parameters()
        ]
        stacked_params = learnable.get(k, [])
        assert len(act_params) == len(stacked_params)
        for p_plain, p_stacked in zip(act_params, stacked_params, strict=True):
            torch.testing.assert_close(p_stacked.grad, p_plain.grad, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("hidden", [(7,), (9, 5), (8, 6, 4)])
def test_mlp_matches_exported_members(hidden):
    config = ExperimentConfig(
        hidden=hidden, activations=("relu", "tanh", "sigmoid"), seeds=(0, 3), lrs=(1e-3, 1e-2)
    )
    model, members = build(config)
    assert model.num_members == len(members) == 12 and model.num_seeds == 2
    x, y = make_batch(2, 5, (1, 6, 6))
    check_against_plain(model, x, y)


def test_mlp_depth_study_shapes():
    config = ExperimentConfig(seeds=(0,), hidden=(8,), depths=(1, 4), activations=("relu", "tanh"))
    model, _ = build(config, depth=4)
    assert [tuple(w.shape) for w in model.weight_layers()] == [(2, 8, 36)] + [(2, 8, 8)] * 3 + [
        (2, 10, 8)
    ]
    x, y = make_batch(1, 4, (1, 6, 6))
    check_against_plain(model, x, y)


def test_mlp_softmax_hidden_over_units():
    config = ExperimentConfig(hidden=(8, 8), activations=("softmax(dim=-1)", "elu"), seeds=(0, 1))
    model, _ = build(config)
    x, y = make_batch(2, 4, (1, 6, 6))
    check_against_plain(model, x, y)
    with pytest.raises(ConfigError, match="not elementwise"):
        build(config.replace(model="cnn"), shape=(1, 8, 8))


def test_mlp_single_activation_and_shared_input():
    config = ExperimentConfig(hidden=(8, 8), activations=("gelu",), seeds=(1, 2, 4))
    model, _ = build(config)
    x, y = make_batch(3, 4, (1, 6, 6))
    check_against_plain(model, x, y)
    # An input shared by every seed equals that input repeated per seed.
    shared = model(x[:1])
    repeated = model(x[:1].expand(3, -1, -1, -1, -1))
    torch.testing.assert_close(shared, repeated, atol=ATOL, rtol=RTOL)


def test_pytorch_init_is_exactly_nn_linear_default():
    config = ExperimentConfig(hidden=(9, 5), activations=("relu", "tanh"), seeds=(0, 7))
    model, members = build(config)
    for k, member in enumerate(members):
        torch.manual_seed(member.seed)
        plain = nn.Sequential(
            nn.Flatten(), nn.Linear(36, 9), nn.ReLU(), nn.Linear(9, 5), nn.Tanh(), nn.Linear(5, 10)
        )
        for layer, linear in enumerate(trainable_modules(plain)):
            assert torch.equal(model.weights[layer][k], linear.weight)
            assert torch.equal(model.biases[layer][k], linear.bias)
    # ... and the stacked model matches those independently built modules.
    plains = []
    for member in members:
        torch.manual_seed(member.seed)
        act = nn.ReLU() if member.activation == "relu" else nn.Tanh()
        plains.append(
            nn.Sequential(
                nn.Flatten(), nn.Linear(36, 9), act, nn.Linear(9, 5), type(act)(), nn.Linear(5, 10)
            )
        )
    x, y = make_batch(2, 4, (1, 6, 6))
    check_against_plain(model, x, y, plains)


def test_pytorch_init_is_exactly_nn_conv2d_default():
    config = ExperimentConfig(model="cnn", hidden=(16,), activations=("relu",), seeds=(5,))
    model, _ = build(config, shape=(1, 8, 8))
    torch.manual_seed(5)
    plain = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4, 16), nn.ReLU(), nn.Linear(16, 10),
    )  # fmt: skip
    for layer, module in enumerate(trainable_modules(plain)):
        assert torch.equal(model.weights[layer][0], module.weight)
        assert torch.equal(model.biases[layer][0], module.bias)


def test_members_of_a_seed_share_initial_weights():
    config = ExperimentConfig(
        hidden=(8,), activations=("relu", "tanh"), seeds=(0, 1), lrs=(1e-3, 1e-2)
    )
    model, _ = build(config)
    w = model.weights[0]
    for k in range(1, 4):
        assert torch.equal(w[k], w[0])
    assert not torch.equal(w[4], w[0])
    again, _ = build(config)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )


@pytest.mark.parametrize("activation", ["prelu", "swish_beta"])
def test_learnable_activations_match_plain(activation):
    config = ExperimentConfig(
        hidden=(7, 6), activations=("relu", activation), seeds=(0, 1), lrs=(1e-3, 3e-3)
    )
    model, _ = build(config)
    owned = [(p, k) for p, k in model.parameter_members() if k is not None]
    # one parameter set per member of the learnable group per hidden layer
    assert sorted({k for _, k in owned}) == [2, 3, 6, 7]
    # make the learnable parameters differ between members so a mix-up would show
    with torch.no_grad():
        for p, k in owned:
            p.add_(0.05 * (k + 1))
    x, y = make_batch(2, 5, (1, 6, 6))
    check_against_plain(model, x, y)


def test_per_unit_prelu_sees_the_plain_layout():
    # num_parameters = units: a slope per hidden unit, so a (units, B) / (B, units) mix-up
    # would fail the shape check or the comparison.
    config = ExperimentConfig(
        seeds=(0,), hidden=(8, 8), activations=("prelu(num_parameters=8)", "relu")
    )
    model, _ = build(config)
    with torch.no_grad():
        for p, owner in model.parameter_members():
            if owner is not None:
                assert p.shape == (8,)
                p.copy_(torch.linspace(-0.5, 0.5, 8))
    x, y = make_batch(1, 5, (1, 6, 6))
    check_against_plain(model, x, y)


def test_parameter_members_lists_every_parameter_once():
    config = ExperimentConfig(hidden=(7, 6), activations=("prelu", "tanh"), seeds=(0,))
    model, _ = build(config)
    listed = [p for p, _ in model.parameter_members()]
    assert len({id(p) for p in listed}) == len(listed)
    assert {id(p) for p in listed} == {id(p) for p in model.parameters()}
    for p, owner in model.parameter_members():
        if owner is None:
            assert p.shape[0] == model.num_members


# --- dropout ----------------------------------------------------------------------------


class FixedMask(nn.Module):
    """Plain inverted dropout with a given mask (already scaled by 1/(1-p))."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


def record_masks(model) -> list[torch.Tensor]:
    masks: list[torch.Tensor] = []
    draw = model._dropout_mask

    def recording(*args, **kwargs):
        mask = draw(*args, **kwargs)
        masks.append(mask.clone())
        return mask

    model._dropout_mask = recording
    return masks


def plains_with_masks(model, masks):
    plains = []
    for k in range(model.num_members):
        plain = model.export_member(k)
        dropouts = [i for i, m in enumerate(plain) if isinstance(m, nn.Dropout)]
        assert len(dropouts) == len(masks)
        for i, mask in zip(dropouts, masks, strict=True):
            plain[i] = FixedMask(mask[k])
        plains.append(plain)
    return plains


def test_dropout_mlp_matches_plain_with_same_masks():
    config = ExperimentConfig(
        hidden=(16, 12), dropout=0.3, activations=("relu", "tanh"), seeds=(0, 1)
    )
    model, _ = build(config)
    masks = record_masks(model)
    x, y = make_batch(2, 6, (1, 6, 6))
    model(x)  # draws the masks
    plains = plains_with_masks(model, masks)
    # A fresh model from the same config draws the same masks: replay and compare.
    build_again, _ = build(config)
    masks_again = record_masks(build_again)
    build_again.load_state_dict(model.state_dict())
    check_against_plain_with_replay(build_again, x, y, plains, masks, masks_again)


def check_against_plain_with_replay(model, x, y, plains, masks, masks_again):
    check_against_plain(model, x, y, plains)
    for a, b in zip(masks, masks_again, strict=True):
        assert torch.equal(a, b)


def test_dropout_masks_depend_on_the_seed_alone():
    p = 0.5
    config = ExperimentConfig(
        hidden=(64,), dropout=p, activations=("relu", "tanh"), lrs=(1e-3, 3e-3), seeds=(3, 5)
    )
    model, _ = build(config)
    masks = record_masks(model)
    x, _ = make_batch(2, 32, (1, 6, 6))
    model(x)
    (mask,) = masks  # members [seed][activation][lr]: 0-3 seed 3, 4-7 seed 5
    values = set(mask.unique().tolist())
    assert values <= {0.0, 1 / (1 - p)}
    assert abs((mask == 0).float().mean().item() - p) < 0.05
    # The members of a seed share its masks (paired); different seeds draw different ones.
    assert all(torch.equal(mask[0], mask[k]) for k in (1, 2, 3))
    assert all(torch.equal(mask[4], mask[k]) for k in (5, 6, 7))
    assert not torch.equal(mask[0], mask[4])
    # Seed 5's masks do not depend on which other seeds, activations or lrs are trained
    # with it (a shard of the study, actlab.study.cluster).
    alone, _ = build(config.replace(seeds=(5,), activations=("tanh",), lrs=(3e-3,)))
    alone_masks = record_masks(alone)
    alone(x[1:])
    assert torch.equal(alone_masks[0][0], mask[7])


def test_dropout_off_in_eval_mode():
    config = ExperimentConfig(hidden=(16,), dropout=0.5, activations=("relu",), seeds=(0,))
    model, _ = build(config)
    x, _ = make_batch(1, 4, (1, 6, 6))
    model.eval()
    plain = model.export_member(0).eval()
    torch.testing.assert_close(model(x)[0], plain(x[0]), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(model(x), model(x))
    assert build(config.replace(dropout=0.0))[0].dropout_generators() == []


# --- CNN --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 10, 7)])
def test_cnn_matches_exported_members(shape):
    config = ExperimentConfig(
        model="cnn", hidden=(12,), activations=("relu", "tanh", "prelu"), seeds=(0, 2)
    )
    model, _ = build(config, shape=shape)
    x, y = make_batch(2, 3, shape)
    check_against_plain(model, x, y)
    shared = model(x[:1])  # one batch shared by both seeds: conv 1 with one group
    torch.testing.assert_close(shared, model(x[:1].expand(2, -1, -1, -1, -1)), atol=ATOL, rtol=RTOL)
    preacts: list = []
    logits = model(x, preactivations=preacts)
    for p in preacts:
        p.retain_grad()
    logits.sum().backward()
    assert all(p.grad is not None for p in preacts)
    assert [tuple(p.shape) for p in preacts] == [
        (6, 3, 32, *shape[1:]),
        (6, 3, 64, shape[1] // 2, shape[2] // 2),
        (6, 3, 12),
    ]


def test_cnn_cifar_and_mnist_shapes_with_dropout():
    for shape in [(1, 28, 28), (3, 32, 32)]:
        config = ExperimentConfig(
            seeds=(0,), model="cnn", hidden=(32,), dropout=0.25, activations=("relu", "gelu")
        )
        model, _ = build(config, shape=shape)
        masks = record_masks(model)
        x, y = make_batch(1, 4, shape)
        model(x)
        plains = plains_with_masks(model, masks)
        replay, _ = build(config, shape=shape)
        check_against_plain_with_replay(replay, x, y, plains, masks, record_masks(replay))


def test_cnn_refuses_bad_sizes_and_depths():
    config = ExperimentConfig(seeds=(0,), model="cnn", activations=("relu",))
    with pytest.raises(ConfigError, match="at least 4x4"):
        build(config, shape=(1, 3, 8))
    with pytest.raises(ConfigError, match="--depths"):
        build(config.replace(depths=(2,)), shape=(1, 8, 8), depth=2)


# --- diagnostics hook -------------------------------------------------------------------


def test_preactivations_are_used_tensors():
    config = ExperimentConfig(hidden=(8, 6), activations=("relu", "tanh"), seeds=(0, 1))
    model, _ = build(config)
    x, y = make_batch(2, 4, (1, 6, 6))
    preacts: list = []
    logits = model(x, preactivations=preacts)
    assert [tuple(p.shape) for p in preacts] == [(4, 4, 8), (4, 4, 6)]
    for p in preacts:
        p.retain_grad()
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in preacts)
    # member 1 (tanh, seed 0) layer 1 pre-activation equals the plain Linear's output
    plain = model.export_member(1)
    torch.testing.assert_close(preacts[0][1], plain[1](plain[0](x[0])), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(logits, model(x), atol=ATOL, rtol=RTOL)


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["softmax", "Softmax(dim=-1)", "log_softmax"])
def test_softmax_output_is_refused_as_double_softmax(spec):
    with pytest.raises(ConfigError, match="double softmax"):
        check_output_activation(spec)


def test_output_logits_accepted_and_other_output_refused():
    check_output_activation(None)
    check_output_activation("linear")
    with pytest.raises(ConfigError, match="logits"):
        check_output_activation("sigmoid")


def test_shape_changing_activation_is_refused():
    with pytest.raises(ConfigError, match="not elementwise"):
        build(ExperimentConfig(seeds=(0,), hidden=(8,), activations=("glu",)))


# --- init -------------------------------------------------------------------------------


def wide_config(init: str, **kw) -> ExperimentConfig:
    return ExperimentConfig(hidden=(512,), init=init, activations=("relu",), seeds=(0,), **kw)


@pytest.mark.parametrize(
    "init, std",
    [
        ("glorot", lambda fi, fo: math.sqrt(2.0 / (fi + fo))),
        ("kaiming", lambda fi, fo: math.sqrt(2.0 / fi)),
        ("lecun", lambda fi, fo: math.sqrt(1.0 / fi)),
        ("pytorch", lambda fi, fo: math.sqrt(1.0 / (3 * fi))),
    ],
)
def test_init_statistics(init, std):
    model, _ = build(wide_config(init), shape=(1, 32, 32))
    weight = model.weights[0][0]  # (512, 1024): 524288 draws
    fan_out, fan_in = weight.shape
    assert abs(weight.mean().item()) < 0.01 * std(fan_in, fan_out)
    assert weight.std().item() == pytest.approx(std(fan_in, fan_out), rel=0.01)
    if init == "pytorch":
        bound = 1 / math.sqrt(fan_in)
        assert model.biases[0].abs().max().item() <= bound
        assert model.biases[0].std().item() > 0.5 * bound / math.sqrt(3)
    else:
        assert torch.count_nonzero(model.biases[0]) == 0
    other_seed, _ = build(wide_config(init).replace(seeds=(1,)), shape=(1, 32, 32))
    same_seed, _ = build(wide_config(init), shape=(1, 32, 32))
    assert torch.equal(same_seed.weights[0], model.weights[0])
    assert not torch.equal(other_seed.weights[0], model.weights[0])


@pytest.mark.parametrize("init", ["pytorch", "glorot", "kaiming", "lecun"])
def test_init_gain_scales_each_member_by_its_activation_gain(init):
    config = ExperimentConfig(seeds=(0,),
        hidden=(16, 8), init=init, init_gain=True,
        activations=("relu", "tanh", "sigmoid", "leaky_relu(negative_slope=0.2)", "gelu"),
    )  # fmt: skip
    model, _ = build(config)
    gains = [math.sqrt(2), 5 / 3, 1.0, math.sqrt(2 / (1 + 0.2**2)), 1.0]
    base = build(config.replace(init_gain=False, activations=("sigmoid",)))[0]
    default_gain = math.sqrt(2) if init == "kaiming" else 1.0  # kaiming_normal_'s relu gain
    draws = [w[0] / default_gain for w in base.weight_layers()]
    for layer in range(2):
        for k, gain in enumerate(gains):
            torch.testing.assert_close(model.weights[layer][k], gain * draws[layer])
    for k in range(5):  # the output layer gives logits: gain 1
        torch.testing.assert_close(model.weights[2][k], draws[2])


def test_cli_refuses_softmax_output_with_one_line(capsys):
    from actlab.cli.main import EXIT_USER_ERROR, main

    code = main(["compare", "--output-activation", "softmax", "--out", "/nonexistent/never"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR
    assert err.count("\n") == 0 and "double softmax" in err
