"""The catalog's lookup API, coverage of torch.nn, registration, labels and properties."""

import inspect
import math

import pytest
import torch
from torch import nn

import actlab
from actlab.catalog.entries import KERAS_NOTES
from actlab.catalog.lookup import find
from actlab.catalog.properties import properties
from actlab.catalog.registry import (
    ActivationSpec,
    canonical_label,
    get,
    get_fn,
    list_activations,
    register,
    resolve,
    unregister,
)
from actlab.errors import SpecError, UnknownActivationError


def test_every_torch_nn_activation_is_in_the_catalog():
    classes = [
        name
        for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
        if issubclass(cls, nn.Module)
        and cls.__module__ == torch.nn.modules.activation.__name__
        and name != "MultiheadAttention"
    ]
    assert len(classes) >= 27
    missing = []
    for name in classes:
        try:
            entry, params = resolve(name)
            module = get(name)
        except UnknownActivationError:
            missing.append(name)
            continue
        except SpecError:  # needs a parameter (dim, threshold): use the entry's example
            module = get(find(name)[0].example)
        assert type(module).__name__ == name.replace("Softmax2d", "Softmax"), name
    assert not missing, f"torch.nn activations missing from the catalog: {missing}"
    torch_classes = {spec.torch_class for spec in list_activations()}
    assert set(classes) - {"Softmax2d"} <= torch_classes


def test_gelu_has_exact_and_tanh_entries():
    assert get("gelu").approximate == "none"
    assert get("gelu_tanh").approximate == "tanh"
    x = torch.linspace(-3, 3, 7)
    assert not torch.equal(get_fn("gelu")(x), get_fn("gelu_tanh")(x))


def test_softmax2d_maps_to_softmax_over_channels():
    entry, params = resolve("Softmax2d")
    assert entry.name == "softmax" and params == {"dim": -3}


@pytest.mark.parametrize(
    "spec, name, params",
    [
        ("relu", "relu", {}),
        ("ReLU", "relu", {}),
        ("LeakyReLU", "leaky_relu", {"negative_slope": 0.01}),
        ("leakyrelu", "leaky_relu", {"negative_slope": 0.01}),
        ("leaky_relu(negative_slope=0.2)", "leaky_relu", {"negative_slope": 0.2}),
        ("leaky_relu(0.3)", "leaky_relu", {"negative_slope": 0.3}),
        ({"name": "elu", "alpha": 2}, "elu", {"alpha": 2.0}),
        ("swish", "silu", {}),
        ("logistic", "sigmoid", {}),
        ("hard_silu", "hard_swish", {}),
        ("Hardswish", "hard_swish", {}),
        ("softmax(axis=-1)", "softmax", {"dim": -1}),
        ("hard_shrink(threshold=0.3)", "hard_shrink", {"lambd": 0.3}),
        ("gelu(approximate='tanh')", "gelu", {"approximate": "tanh"}),
    ],
)
def test_resolve_accepts_every_spec_form(spec, name, params):
    entry, resolved = resolve(spec)
    assert isinstance(entry, ActivationSpec)
    assert entry.name == name
    assert resolved == params


def test_keyword_params_override_the_spec_string():
    assert resolve("leaky_relu(negative_slope=0.2)", negative_slope=0.5)[1] == {
        "negative_slope": 0.5
    }
    assert get("elu", alpha=0.5).alpha == 0.5


def test_unknown_name_suggests_nearest_names():
    with pytest.raises(UnknownActivationError) as error:
        resolve("rleu")
    assert str(error.value) == "unknown activation 'rleu'; did you mean relu, reglu, relu2?"
    with pytest.raises(UnknownActivationError, match="did you mean sigmoid"):
        get("sigmod")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("leaky_relu(negative_slope=abc)", "bad value 'abc' for 'negative_slope'"),
        ("leaky_relu(negative_slope='a')", "expected a number"),
        ("leaky_relu(negative_slope=True)", "expected a number"),
        ("leaky_relu(slope=0.2)", "has no parameter 'slope'"),
        ("leaky_relu(negative_slope=0.2", "bad activation spec"),
        ("relu(inplace=1)", "expected True or False"),
        ("sigmoid(inplace=True)", "has no parameter 'inplace'"),
        ("softmax", "softmax needs dim, e.g. 'softmax(dim=-1)'"),
        ("log_softmax", "log_softmax needs dim"),
        ("softmin", "softmin needs dim"),
        ("softmax(dim=1.5)", "expected an integer"),
        ("threshold", "threshold needs threshold and value"),
        ("rrelu(lower=0.5, upper=0.1)", "lower <= upper"),
        ("gelu(approximate='fast')", "'none' or 'tanh'"),
        ("prelu(num_parameters=0)", "num_parameters must be > 0"),
        ({"alpha": 1.0}, "needs a 'name' key"),
        (3.5, "cannot use 3.5 as an activation"),
        ("expr:x +", "bad expression"),
    ],
)
def test_bad_specs_raise_one_line_spec_errors(spec, message):
    with pytest.raises(SpecError) as error:
        get(spec)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_get_returns_a_fresh_module_each_call():
    first, second = get("prelu"), get("prelu")
    assert first is not second
    assert first.weight.data_ptr() != second.weight.data_ptr()
    with torch.no_grad():
        first.weight.fill_(0.5)
    assert second.weight.item() == pytest.approx(0.25)


def test_modules_callables_and_classes_pass_through():
    module = nn.Tanh()
    assert get(module) is module
    assert isinstance(get(nn.ReLU), nn.ReLU)
    wrapped = get(lambda x: 2 * x)
    assert isinstance(wrapped, nn.Module)
    assert torch.equal(wrapped(torch.ones(3)), torch.full((3,), 2.0))
    assert get_fn(torch.tanh) is torch.tanh


def test_inplace_is_accepted_only_where_supported():
    assert get("relu(inplace=True)").inplace is True
    assert get("leaky_relu", inplace=True).inplace is True
    assert [s.name for s in list_activations() if s.inplace and s.torch_class is None] == []


def test_keras_defaults_give_the_keras_variant():
    assert get("leaky_relu", keras_defaults=True).negative_slope == 0.2
    assert get("leaky_relu").negative_slope == 0.01
    assert get("prelu", keras_defaults=True).weight.item() == 0.0
    assert get("softmax", keras_defaults=True).dim == -1
    # explicit parameters still win over the Keras defaults
    assert get("leaky_relu(negative_slope=0.1)", keras_defaults=True).negative_slope == 0.1


def test_keras_differences_are_recorded():
    by_name = {spec.name: spec for spec in list_activations()}
    assert any("0.3" in d and "0.2" in d for d in by_name["leaky_relu"].keras_differences)
    assert any("approximate" in d for d in by_name["gelu"].keras_differences)
    assert any("Keras 2" in d for d in by_name["hard_sigmoid"].keras_differences)
    assert any("0.25" in d for d in by_name["prelu"].keras_differences)
    assert any("axis" in d for d in by_name["softmax"].keras_differences)
    notes = " ".join(KERAS_NOTES)
    assert "glorot" in notes and "1e-7" in notes and "1e-8" in notes


def test_entries_are_well_formed():
    for spec in list_activations():
        assert spec.name == spec.name.lower() and " " not in spec.name
        assert spec.formula and spec.reference, spec.name
        resolve(spec.example)  # the example of every entry resolves
        if spec.needs_dim:
            assert "dim" in spec.params and not spec.elementwise
    assert not any(
        s.elementwise
        for s in list_activations()
        if s.name in ("glu", "softmax", "softmin", "log_softmax", "sparsemax")
    )


def test_swish_beta_is_learnable_and_starts_at_silu():
    module = get("swish_beta")
    assert [p.shape for p in module.parameters()] == [torch.Size([])]
    x = torch.linspace(-4, 4, 9)
    assert torch.allclose(module(x), get_fn("silu")(x))
    assert torch.allclose(get("swish_beta(beta=2.0)")(x), x * torch.sigmoid(2 * x))


def test_canonical_label_round_trips():
    assert canonical_label("LeakyReLU") == "leaky_relu"
    assert canonical_label("leaky_relu(negative_slope=0.2)") == "leaky_relu(negative_slope=0.2)"
    assert canonical_label({"name": "softmax", "dim": -1}) == "softmax(dim=-1)"
    assert canonical_label("expr:x * sigmoid(x)") == "expr:x * sigmoid(x)"
    for spec in list_activations():
        label = canonical_label(spec.example)
        assert canonical_label(label) == label
        assert resolve(label) == resolve(spec.example)


def test_register_adds_refuses_duplicates_and_overwrites():
    register(
        "double_relu",
        lambda x, scale=2.0: scale * torch.relu(x),
        params={"scale": 2.0},
        formula="scale * max(0, x)",
        reference="test",
    )
    try:
        assert "double_relu" in [s.name for s in list_activations()]
        assert torch.equal(
            get("double_relu(scale=3.0)")(torch.tensor([-1.0, 1.0])), torch.tensor([0.0, 3.0])
        )
        with pytest.raises(SpecError, match="already registered"):
            register("double_relu", torch.relu)
        with pytest.raises(SpecError, match="already used"):
            register("my_swish", torch.relu, aliases=("swish",))
        register("double_relu", lambda x: 4 * torch.relu(x), overwrite=True)
        assert get_fn("double_relu")(torch.tensor([1.0])).item() == 4.0
        assert properties("double_relu")["max_slope"] == 4.0  # the cache was invalidated
    finally:
        unregister("double_relu")
    with pytest.raises(UnknownActivationError):
        resolve("double_relu")
    with pytest.raises(SpecError, match="snake_case"):
        register("My Act", torch.relu)


def test_register_with_only_a_module():
    register("tanh_module", module=lambda: nn.Tanh())
    try:
        assert isinstance(get("tanh_module"), nn.Tanh)
        x = torch.linspace(-2, 2, 5)
        assert torch.equal(get_fn("tanh_module")(x), torch.tanh(x))
    finally:
        unregister("tanh_module")


def test_public_names_are_exported_from_the_package():
    assert actlab.get is get and actlab.get_fn is get_fn
    assert actlab.register is register and actlab.list_activations is list_activations


# --- properties, measured ------------------------------------------------------------------


def test_properties_of_textbook_activations():
    relu, sigmoid, tanh = properties("relu"), properties("sigmoid"), properties("tanh")
    assert relu["range"] == (0.0, float("inf"))
    assert relu["monotonic"] and not relu["smooth"] and relu["continuous"]
    assert relu["saturating_left"] and not relu["saturating_right"]
    assert sigmoid["range"] == (0.0, 1.0) and sigmoid["f0"] == 0.5
    assert sigmoid["max_slope"] == pytest.approx(0.25) and sigmoid["df0"] == pytest.approx(0.25)
    # E f(z), z ~ N(0, 1): 1 / sqrt(2 pi) for relu; 1/2 and 0 by symmetry for sigmoid, tanh
    assert relu["mean_normal"] == pytest.approx(1 / math.sqrt(2 * math.pi), abs=1e-6)
    assert sigmoid["mean_normal"] == pytest.approx(0.5, abs=1e-6)
    assert tanh["mean_normal"] == 0.0
    assert tanh["saturating_left"] and tanh["saturating_right"] and tanh["smooth"]


def test_properties_see_shape_details():
    assert not properties("gelu")["monotonic"]  # dips below zero
    assert properties("mish")["range"][0] == pytest.approx(-0.3088, abs=1e-4)
    assert properties("hard_swish")["range"][0] == pytest.approx(-0.375)
    assert properties("elu")["smooth"]  # C1 at alpha = 1
    assert not properties("selu")["smooth"]  # slope jumps from 1.76 to 1.05 at 0
    assert not properties("elu(alpha=2.0)")["smooth"]
    assert not properties("hard_shrink")["continuous"]
    assert properties("leaky_relu")["range"] == (float("-inf"), float("inf"))
    assert properties("softsign")["range"] == (-1.0, 1.0)
    assert properties("exponential")["max_slope"] == float("inf")
    assert properties("softmax(dim=-1)") == properties("sigmoid")  # unit 0 of [x, 0]


def test_properties_of_an_expression_match_the_named_entry():
    by_expr, by_name = properties("expr:x * sigmoid(x)"), properties("silu")
    assert by_expr.keys() == by_name.keys()
    for key in by_name:
        assert by_expr[key] == pytest.approx(by_name[key], abs=1e-7), key


def test_properties_are_cached_and_copied():
    first = properties("tanh")
    first["monotonic"] = "changed"
    assert properties("tanh")["monotonic"] is True
    assert properties(torch.sin)["mean_normal"] == 0.0  # callables work, uncached
