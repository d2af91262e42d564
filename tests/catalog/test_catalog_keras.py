"""The catalog against real Keras 3 (backend torch, set in conftest.py): every Keras
activation name is in the catalog, and every Keras-named entry at `keras_defaults=True`
computes what Keras computes at its defaults."""

import numpy as np
import pytest
import torch

from actlab.catalog.registry import get, get_fn, list_activations, resolve

keras = pytest.importorskip("keras")

NOT_ACTIVATIONS = {"get", "serialize", "deserialize"}
# Keras functions without defaults for some arguments: what we pass to both sides.
KERAS_ARGUMENTS = {
    "threshold": ({"threshold": 0.3, "default_value": -1.0}, {"threshold": 0.3, "value": -1.0})
}

POINTS = np.array(
    [-30.0, -7.5, -2.2, -1.3, -0.7, -0.4, -1e-3, 0.0, 1e-3, 0.3, 0.8, 1.7, 4.2, 7.5, 30.0],
    dtype=np.float32,
)


def keras_activation_names() -> list[str]:
    names = [
        name
        for name in dir(keras.activations)
        if not name.startswith("_")
        and name not in NOT_ACTIVATIONS
        and callable(getattr(keras.activations, name))
    ]
    assert len(names) >= 30
    return sorted(names)


def test_every_keras_activation_name_is_in_the_catalog():
    missing = []
    for name in keras_activation_names():
        try:
            resolve(
                name, **({"dim": -1} if name in ("softmax", "log_softmax", "sparsemax") else {})
            )
        except Exception:  # noqa: BLE001 - report every missing name at once
            if name != "threshold":
                missing.append(name)
    assert not missing, f"Keras activations missing from the catalog: {missing}"
    keras_names = {spec.keras_name for spec in list_activations()}
    for name in keras_activation_names():
        entry = resolve(name, **KERAS_ARGUMENTS.get(name, ({}, {}))[1], keras_defaults=True)[0]
        assert entry.keras_name == name or name in entry.aliases, name
    assert keras_names - {None} <= set(keras_activation_names())


def _keras_input(spec) -> np.ndarray:
    if spec.elementwise:
        return POINTS
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(3, 8)).astype(np.float32)
    x[0, 0], x[2] = 30.0, rng.normal(scale=1e-3, size=8)
    return x


KERAS_ENTRIES = [spec for spec in list_activations() if spec.keras_name]


@pytest.mark.parametrize("spec", KERAS_ENTRIES, ids=[s.name for s in KERAS_ENTRIES])
def test_entry_matches_keras_at_keras_defaults(spec):
    keras_kwargs, our_kwargs = KERAS_ARGUMENTS.get(spec.keras_name, ({}, {}))
    x = _keras_input(spec)
    expected = keras.ops.convert_to_numpy(
        getattr(keras.activations, spec.keras_name)(keras.ops.convert_to_tensor(x), **keras_kwargs)
    )
    ours = get_fn(spec.name, keras_defaults=True, **our_kwargs)(torch.tensor(x))
    if spec.name == "sparsemax":
        # Keras 3.15's sparsemax takes tau from the sum of the cumulative sums over the
        # support, so its rows do not sum to 1 when more than one unit is in the support
        # (recorded in keras_differences). Compare the rows where Keras is a distribution.
        rows = np.abs(expected.sum(-1) - 1) < 1e-5
        assert rows.any()
        assert torch.allclose(ours.sum(-1), torch.ones(len(x)), atol=1e-5)
        x, expected, ours = x[rows], expected[rows], ours[torch.from_numpy(rows)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=2e-5, atol=2e-6)
    module = get(spec.name, keras_defaults=True, **our_kwargs).eval()
    assert isinstance(module, torch.nn.Module)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.tensor(x)).numpy(), expected, rtol=2e-5, atol=2e-6)


def test_recorded_keras_differences_are_true():
    x = keras.ops.convert_to_tensor(np.array([-1.0, 2.0], dtype=np.float32))
    to_numpy = keras.ops.convert_to_numpy
    # LeakyReLU: 0.3 in the Keras layer, 0.2 in the function, 0.01 in torch.
    assert to_numpy(keras.layers.LeakyReLU()(x))[0] == pytest.approx(-0.3)
    assert to_numpy(keras.activations.leaky_relu(x))[0] == pytest.approx(-0.2)
    assert get("leaky_relu")(torch.tensor([-1.0])).item() == pytest.approx(-0.01)
    # keras.ops.gelu approximates by default: it is our gelu_tanh, not gelu.
    points = np.linspace(-4, 4, 17, dtype=np.float32)
    ops_gelu = to_numpy(keras.ops.gelu(keras.ops.convert_to_tensor(points)))
    np.testing.assert_allclose(
        ops_gelu, get_fn("gelu_tanh")(torch.tensor(points)).numpy(), atol=1e-6
    )
    assert np.abs(ops_gelu - get_fn("gelu")(torch.tensor(points)).numpy()).max() > 1e-4
    # PReLU starts at slope 0 in Keras, 0.25 in torch; keras_defaults follows Keras.
    layer = keras.layers.PReLU()
    assert to_numpy(layer(x))[0] == 0.0
    assert get("prelu", keras_defaults=True)(torch.tensor([-1.0])).item() == 0.0
    assert get("prelu")(torch.tensor([-1.0])).item() == pytest.approx(-0.25)
    # Keras 3 hard_sigmoid is relu6(x + 3) / 6, not Keras 2's 0.2 x + 0.5.
    assert to_numpy(keras.activations.hard_sigmoid(x))[0] == pytest.approx(2 / 6)
