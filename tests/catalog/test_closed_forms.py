"""The closed-form kernels against the catalog's own modules and autograd, and
the hand-written MLP backward against autograd through the stacked model."""

import pytest
import torch
import torch.nn.functional as F
from fixtures.engine import make_data, small_config

from actlab.catalog import registry as catalog
from actlab.catalog.closed_forms import CLOSED_FORMS, closed_form
from actlab.engine.mlp_step import MLPStep, supports
from actlab.engine.trainer import Trainer
from actlab.nn.models import activation_info

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = {
    "relu": "relu",
    "relu6": "relu6",
    "leaky_relu": "leaky_relu(negative_slope=0.2)",
    "elu": "elu(alpha=0.7)",
    "selu": "selu",
    "celu": "celu(alpha=1.5)",
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
    "silu": "silu",
    "mish": "mish",
    "hard_swish": "hard_swish",
    "sigmoid": "sigmoid",
    "hard_sigmoid": "hard_sigmoid",
    "tanh": "tanh",
    "hard_tanh": "hard_tanh(min_val=-2, max_val=0.5)",
    "softplus": "softplus(beta=2, threshold=5)",
    "soft_shrink": "soft_shrink",
    "hard_shrink": "hard_shrink",
    "linear": "linear",
}


def test_every_closed_form_is_tested_and_is_a_catalog_entry():
    assert set(SPECS) == set(CLOSED_FORMS)
    names = {spec.name for spec in catalog.list_activations()}
    assert set(CLOSED_FORMS) <= names
    assert closed_form("prelu") is None and closed_form("rrelu") is None


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SPECS))
def test_closed_form_equals_the_catalog_module_and_autograd(name, device):
    info = activation_info(SPECS[name])
    assert info.name == name
    module = catalog.get(SPECS[name])
    form = closed_form(name)
    # Kinks and edges of every entry (0, +-0.5, +-1, +-2, 3, 6, softplus's threshold / beta)
    # and a spread of random values; float64, and float32 as the engine trains.
    special = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 6.0, 2.5, 20.0])
    values = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 4
    for dtype in (torch.float64, torch.float32):
        x = torch.cat([special, values]).to(device, dtype).requires_grad_(True)
        y = module(x)
        grad = torch.rand_like(x)
        (expected,) = torch.autograd.grad(y, x, grad)
        out = torch.empty_like(x)
        assert form.forward(x.detach(), info.params, out) is out
        assert torch.equal(out, y.detach())  # the very kernel the module runs
        assert form.backward(grad, x.detach(), y.detach(), info.params, out) is out
        torch.testing.assert_close(out, expected, rtol=0, atol=0)  # autograd's own kernel


ACTIVATION_MIXES = {
    "closed-forms": ("relu", "sigmoid", "tanh", "leaky_relu"),
    "autograd-fallback": ("relu", "expr:x * tanh(softplus(x))", "softmax(dim=-1)"),
    "one-group": ("elu",),
}


@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("mix", list(ACTIVATION_MIXES))
def test_hand_written_backward_equals_autograd(mix, dropout):
    config = small_config(activations=ACTIVATION_MIXES[mix], hidden=(16, 12, 8), dropout=dropout)
    trainer = Trainer(config, make_data())
    model = trainer.model
    assert supports(model)
    step = MLPStep(model)
    assert (step.closed_forms is None) == (mix == "autograd-fallback")
    data = trainer.data
    index = torch.arange(40).view(1, 40).expand(2, 40) + torch.tensor([[0], [100]])
    inputs, targets = trainer._batch(index)
    alive = torch.ones(len(trainer.members), dtype=torch.bool)
    alive[1] = False  # member 1 is left out of this step

    generators = [g.get_state() for g in model.dropout_generators()]
    logits, losses, cache = step.forward(inputs, targets)
    step.backward(cache, alive)
    hand = [p.grad.clone() for p in trainer.optimizer.params]

    for g, state in zip(model.dropout_generators(), generators, strict=True):
        g.set_state(state)  # the same dropout masks
    for p in trainer.optimizer.params:
        p.grad = None
    reference = model(inputs)
    K, b = targets.shape
    per_member = (
        F.cross_entropy(reference.reshape(K * b, -1), targets.reshape(K * b), reduction="none")
        .view(K, b)
        .mean(dim=1)
    )
    torch.where(alive, per_member, 0.0).sum().backward()
    torch.testing.assert_close(logits, reference.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(losses, per_member.detach(), rtol=1e-6, atol=1e-6)
    for mine, p in zip(hand, trainer.optimizer.params, strict=True):
        torch.testing.assert_close(mine, p.grad, rtol=1e-5, atol=1e-7)
        assert mine.view(K, -1)[1].abs().max() == 0  # a member left out: zero gradient
    assert data.x_train.shape[0] > 140


def test_learnable_activations_and_the_cnn_train_with_autograd():
    prelu = Trainer(small_config(activations=("relu", "prelu")), make_data())
    cnn = Trainer(small_config(model="cnn", hidden=(8,)), make_data())
    plain = Trainer(small_config(), make_data())
    assert prelu.mlp_step is None and cnn.mlp_step is None
    assert isinstance(plain.mlp_step, MLPStep)


@pytest.mark.parametrize(
    "activations",
    [("rrelu(inplace=True)", "relu"), ("relu(inplace=True)", "leaky_relu(inplace=True)"),
     ("threshold(threshold=0.1, value=0.0, inplace=True)",)],
    ids=["autograd-fallback", "closed-forms", "threshold"],
)  # fmt: skip
def test_inplace_activation_specs_train_like_their_out_of_place_twins(activations):
    inplace = Trainer(small_config(activations=activations), make_data())
    plain = [a.replace("inplace=True", "inplace=False") for a in activations]
    twin = Trainer(small_config(activations=tuple(plain)), make_data())
    rows, twin_rows = inplace.train_epoch().metrics, twin.train_epoch().metrics
    for a, b in zip(rows, twin_rows, strict=True):
        assert a["status"] == b["status"] == "ok"
        if "rrelu" not in a["activation"]:  # rrelu draws random slopes in training
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
