"""`actlab list`, `actlab show` and `actlab plot`, in-process and once as a subprocess."""

import subprocess
import sys

import pytest

from actlab.catalog.registry import list_activations
from actlab.cli.main import main


def test_list_prints_one_row_per_entry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for column in (
        "name",
        "aliases",
        "keras",
        "parameters",
        "range",
        "monotonic",
        "E f(z)",
        "saturating",
    ):
        assert column in lines[0]
    rows = lines[2 : lines.index("")]
    names = [line.split()[0] for line in rows]
    assert names == [spec.name for spec in list_activations()]
    assert "standard-normal" in lines[-1]  # what the E f(z) column means
    relu = next(line for line in lines if line.startswith("relu "))
    assert "0 .. inf" in relu and "left" in relu


def test_list_shows_a_registered_activation_in_the_same_process(capsys):
    import torch

    from actlab.catalog.registry import register, unregister

    assert main(["list"]) == 0  # the cached table, if any, is written or read here
    capsys.readouterr()
    register("listed_relu", lambda x: torch.relu(x))
    try:
        assert main(["list"]) == 0
        assert "listed_relu" in capsys.readouterr().out
    finally:
        unregister("listed_relu")
    assert main(["list"]) == 0
    assert "listed_relu" not in capsys.readouterr().out


@pytest.mark.slow
def test_list_as_a_subprocess_shows_every_catalog_entry():
    result = subprocess.run(
        [sys.executable, "-m", "actlab", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.splitlines()
    listed = {line.split()[0] for line in lines[2 : lines.index("")]}
    missing = [spec.name for spec in list_activations() if spec.name not in listed]
    assert not missing, f"missing from `actlab list`: {missing}"


def test_show_gives_formula_defaults_keras_differences_and_properties(capsys):
    assert main(["show", "LeakyReLU"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("leaky_relu\n")
    for text in ("negative_slope * x", "negative_slope=0.01", "negative_slope=0.2", "0.3",
                 "monotonic:", "f(0) = 0", "f'(0) = 0.01", "glorot", "1e-7"):  # fmt: skip
        assert text in out, text


def test_show_accepts_spec_strings_expressions_and_dim_entries(capsys):
    assert main(["show", "leaky_relu(negative_slope=0.2)"]) == 0
    assert "f'(0) = 0.2" in capsys.readouterr().out
    assert main(["show", "expr:x * sigmoid(1.702 * x)"]) == 0
    assert "f'(0) = 0.5" in capsys.readouterr().out
    assert main(["show", "softmax"]) == 0
    out = capsys.readouterr().out
    assert "needs dim" in out and "axis=-1" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["show", "rleu"],
            "actlab: error: unknown activation 'rleu'; did you mean relu, reglu, relu2?\n",
        ),
        (["show", "leaky_relu(negative_slope=abc)"], "bad value 'abc' for 'negative_slope'"),
        (["show", "expr:__import__('os').system('id')"], "is not an allowed function"),
        (["show", "softmax(dim=x)"], "bad value 'x' for 'dim'"),
        (
            ["plot", "relu", "--derivatives", "0,3", "-o", "x.png"],
            "derivatives [0, 3] must be among 0, 1, 2",
        ),
        (["plot", "relu", "--derivatives", "a", "-o", "x.png"], "--derivatives 'a'"),
        (["plot", "relu", "--range", "2", "-2", "-o", "x.png"], "LO < HI"),
        (["plot", "relu", "-o", "x.gif"], "use a name ending in .png"),
        (["plot", "rleu", "-o", "x.png"], "unknown activation 'rleu'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("actlab: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_writes_the_file_and_prints_its_path(suffix, capsys, tmp_path):
    target = tmp_path / "figures" / f"act{suffix}"
    argv = ["plot", "relu", "sigmoid", "tanh", "leaky_relu", "softmax(dim=-1)", "-o", str(target)]
    assert main(argv + ["--range", "-4", "4", "--derivatives", "0,1,2"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {target}"
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data
    if suffix == ".svg":
        text = data.decode()
        for label in ("relu", "sigmoid", "leaky_relu", "f''(x)", "Second derivative"):
            assert label in text


def test_plot_activations_figure_has_one_panel_per_order_with_legend():
    from actlab.report.plots import activation_curves, plot_activations

    fig = plot_activations(["relu", "tanh", "expr:x * x"], (-3, 3), (0, 1, 2))
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["f(x)", "f'(x)", "f''(x)"]
    assert all(ax.get_xlabel() == "x" for ax in axes)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == [
        "relu",
        "tanh",
        "expr:x * x",
    ]
    import numpy as np

    x = np.array([-1.5, 0.5, 2.0])
    curves = activation_curves("expr:x * x", x, (0, 1, 2))
    np.testing.assert_allclose(curves[1], 2 * x)
    np.testing.assert_allclose(curves[2], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(activation_curves("relu", x, (2,))[2], 0.0)
