"""The user's own network: loading `FILE.py:NAME`, swapping activations (counted by a
TorchFunctionMode during a real forward, not by reading code), the CLI and Python entry
points, one-line errors, resume and the source-hash refusal."""

from __future__ import annotations

import csv
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import actlab
import actlab.engine.memory
from actlab.cli.main import main
from actlab.config import ExperimentConfig
from actlab.errors import ConfigError
from actlab.nn.user_model import BUILDER, MODULE, build_member, load, swap
from actlab.study import store
from actlab.study.driver import run_study

pytestmark = pytest.mark.usefixtures("one_thread")


class CallCounter(TorchFunctionMode):
    """Counts every torch function and Tensor method called, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def calls(self, *names: str) -> int:
        return sum(self.counts.get(name, 0) for name in names)


RELU_NAMES = ("relu", "relu_")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv(x) + x)


class EveryForm(nn.Module):
    """ReLU as modules (one in place, one nested) and as each functional form."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.block = Block()
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x)
        x = torch.relu(x - 0.1)
        x = (x - 0.1).relu()
        x = x - 0.1
        x.relu_()  # in place: the next line must read the activated x
        x = F.relu(x - 0.1, inplace=True)
        return self.head(self.block(x).flatten(1))


def relu_calls(model: nn.Module, x: torch.Tensor) -> tuple[int, CallCounter]:
    with CallCounter() as counter:
        model(x)
    return counter.calls(*RELU_NAMES), counter


def test_swap_replaces_every_relu_module_and_call():
    torch.manual_seed(0)
    model, x = EveryForm(), torch.randn(2, 1, 6, 6)
    before, _ = relu_calls(model, x)
    assert before == 7
    swapped, report = swap(model, "gelu", "relu")
    after, counter = relu_calls(swapped, x)
    assert after == 0
    assert counter.calls("gelu") == 7
    assert report.counts() == {
        "nn.ReLU": 2, "F.relu()": 2, "torch.relu()": 1, "x.relu()": 1, "x.relu_()": 1,
    }  # fmt: skip
    assert [path for path, _ in report.modules] == ["stem.1", "block.act"]


def test_swapping_relu_for_relu_keeps_the_function_in_place_calls_included():
    torch.manual_seed(0)
    model, x = EveryForm(), torch.randn(4, 1, 6, 6)
    expected = model(x)
    swapped, _ = swap(model, "relu", "relu")
    torch.testing.assert_close(swapped(x), expected)
    # ... and with gelu, the same as the model written with gelu by hand.
    torch.manual_seed(0)
    reference = EveryForm()
    with_gelu, _ = swap(reference, "gelu", "relu")
    manual = _gelu_by_hand(reference, x)
    torch.testing.assert_close(with_gelu(x), manual)


def _gelu_by_hand(model: EveryForm, x: torch.Tensor) -> torch.Tensor:
    x = F.gelu(model.stem[0](x))
    x = F.gelu(x)
    x = F.gelu(x - 0.1)
    x = F.gelu(x - 0.1)
    x = F.gelu(x - 0.1)
    x = F.gelu(x - 0.1)
    block = model.block
    return model.head(F.gelu(block.conv(x) + x).flatten(1))


def test_swap_activations_returns_the_model_and_says_what_it_replaced(capsys):
    model = actlab.swap_activations(EveryForm(), "silu", old="relu")
    assert isinstance(model, nn.Module)
    line = capsys.readouterr().out.strip()
    assert line.startswith("replaced 7 activation(s) by silu: nn.ReLU x2 (stem.1, block.act)")
    assert "x.relu_() x1" in line


def test_default_swaps_the_rectifier_family_and_a_named_user_class():
    class MyAct(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.GELU(), MyAct())
    _, report = swap(model, "relu")
    # tanh (a gate or a squashing output as often as an activation) is left alone, and said
    assert report.counts() == {"nn.GELU": 1}
    assert report.left == [("1", "nn.Tanh", "gates and squashing outputs are kept unless named")]
    assert "left alone (gates and squashing outputs are kept unless named): nn.Tanh x1 (1)" in (
        report.summary()
    )
    swapped, report = swap(model, "elu", ["relu", "tanh", "MyAct"])
    assert report.counts() == {"nn.Tanh": 1, "MyAct": 1, "nn.ReLU": 1}
    assert isinstance(swapped[4], nn.ELU)


class Untraceable(nn.Module):
    def __init__(self, with_module: bool) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)
        self.act = nn.ReLU() if with_module else nn.Identity()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = F.relu(x)
        return self.act(self.layer(x))


def test_untraceable_forward_is_named_and_refused_when_nothing_was_swapped():
    _, report = swap(Untraceable(with_module=True), "gelu", "relu")
    assert report.counts() == {"nn.ReLU": 1}
    assert report.untraced[0][0] == "Untraceable"
    assert "could not read Untraceable.forward (data-dependent Python control flow)" in (
        report.summary()
    )
    with pytest.raises(ConfigError, match="data-dependent Python control flow.*builder"):
        swap(Untraceable(with_module=False), "gelu", "relu")


@pytest.mark.parametrize(
    ("old", "message"),
    [
        ("tanh", "nothing to swap in .*found no tanh"),
        ("Linear", "'Linear' is not an activation"),
        ("softmax", "not elementwise"),
        ("nosuch", "neither a catalog activation nor a module class"),
    ],
)
def test_swap_refusals(old, message):
    with pytest.raises(ConfigError, match=message):
        swap(EveryForm(), "gelu", old)


# --- loading a reference --------------------------------------------------------------

USER_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn


    def build(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), act(), nn.Dropout(0.1), nn.Linear(8, 4))


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))

        def forward(self, x):
            return self.body(x)


    def factory():
        return Net()


    def broken(act):
        raise ValueError("width must be even")


    def wrong_output(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 4), act())  # fine: (B, 4)


    def three_d(act):
        return nn.Sequential(nn.Linear(4, 5), act())  # (B, 1, 4, 5): not (batch, classes)


    def two_args(act, width):
        return None


    def no_act(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 4))


    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(x.flatten(1))


    CONSTANT = 3
    """
)


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "my_net.py"
    path.write_text(USER_FILE)
    return path


def test_load_decides_builder_or_module(user_file):
    assert load(f"{user_file}:build").kind == BUILDER
    assert load(f"{user_file}:Net").kind == MODULE
    assert load(f"{user_file}:factory").kind == MODULE
    loaded = load(f"{user_file}:build")
    assert loaded.source == str(user_file.resolve()) and len(loaded.sha256) == 64
    assert load("torch.nn:Identity").kind == MODULE  # an importable module.path:NAME


def test_a_relative_model_path_resolves_from_another_directory(user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    config = ExperimentConfig(model="my_net.py:build", model_source=str(user_file.resolve()))
    monkeypatch.chdir(user_file.parent.parent)
    assert actlab.nn.user_model.load_for(config).kind == BUILDER
    with pytest.raises(ConfigError, match="file my_net.py not found"):
        load(config.model)


def test_members_are_built_after_their_seed():
    user = actlab.nn.user_model.from_object(
        lambda act: nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, 2))
    )
    model, report = build_member(user, "gelu", 7)
    torch.manual_seed(7)
    alone = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    for mine, theirs in zip(model.parameters(), alone.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert isinstance(model[1], nn.GELU) and report.modules == [("1", "act()")]


def write_small_npz(path: Path, n_train: int = 64, n_test: int = 32) -> str:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 4, 4), dtype=np.uint8)
    y = (x.reshape(len(x), -1)[:, :4].argmax(1)).astype(np.int64)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return f"npz:{path}"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.py:build", "file missing.py not found"),
        ("{file}:nosuch", "has no 'nosuch'; it defines Net, Plain, broken, build"),
        ("{file}:CONSTANT", "is a int, neither a builder"),
        ("{file}:two_args", "takes 2 arguments"),
        ("{file}:broken", "building it raised ValueError: width must be even"),
        ("{file}:three_d", r"output \(2, 1, 4, 5\) for a batch of 2; actlab needs logits"),
        ("{file}:no_act", "the builder never put act\\(\\) in the model"),
        ("{file}:Plain", "nothing to swap in"),
        ("no_such_package.models:net", "no module 'no_such_package'"),
    ],
)
def test_bad_models_are_one_line_errors(user_file, tmp_path, capsys, name, message):
    data = write_small_npz(tmp_path / "d.npz")
    model = name.format(file=user_file)
    code = main(["compare", "--model", model, "--dataset", data, "--epochs", "1", "--seeds", "1",
                 "--threads", "1", "--quiet", "--no-report", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("actlab: error: ")
    assert re.search(message, err), err


def test_a_study_that_does_not_fit_says_how_many_members_would(
    user_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(actlab.engine.memory, "available_bytes", lambda device: 40_000)
    data = write_small_npz(tmp_path / "d.npz")
    code = main(["compare", "--model", f"{user_file}:build", "--dataset", data, "--seeds", "4",
                 "--activations", "relu,gelu", "--quiet", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(r"the 8 members of .* need about .* about \d+ members would fit", err), err


def test_swap_target_that_is_not_an_activation_is_one_line(user_file, tmp_path, capsys):
    data = write_small_npz(tmp_path / "d.npz")
    code = main(["compare", "--model", f"{user_file}:Net", "--swap", "Linear", "--seeds", "1", "--dataset", data,
                 "--epochs", "1", "--quiet", "--no-report", "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    assert "'Linear' is not an activation" in capsys.readouterr().err


def metric_rows(run: Path) -> list[dict]:
    with (run / store.METRICS_FILE).open() as handle:
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(handle)]


def test_cli_run_resume_report_and_changed_source_refusal(user_file, tmp_path, capsys):
    data = write_small_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    options = ["compare", "--model", f"{user_file}:Net", "--swap", "relu", "--dataset", data,
               "--activations", "relu,tanh,rrelu", "--seeds", "2", "--epochs", "3",
               "--batch-size", "16", "--threads", "1", "--stacking", "vmap", "--quiet",
               "--out"]  # fmt: skip
    assert main([*options, str(tmp_path / "reference")]) == 0
    out = capsys.readouterr()
    assert "nn.ReLU x1 (body.2)" in out.out
    # rrelu is random in training: its members train one by one, said once.
    assert "actlab: note:" in out.err and "rrelu members train one by one" in out.err
    assert (tmp_path / "reference" / "report.html").is_file()

    config = ExperimentConfig.from_dict(store.read_run(tmp_path / "reference").config.to_dict())
    stop = {"epoch": 2}

    def interrupt(result):
        if result.epoch == stop["epoch"]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # (the rrelu note was said once, above)
        run_study(config, out=run, on_epoch=interrupt)
    result = run_study(config, out=run)
    assert result.resumed_from == (None, 2)
    assert metric_rows(run) == metric_rows(tmp_path / "reference")
    assert main(["report", str(run)]) == 0

    user_file.write_text(USER_FILE + "\n# changed\n")
    capsys.readouterr()
    assert main([*options[:-2], "--epochs", "4", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{user_file.resolve()} changed since the run in {run} started" in err


def test_python_api_with_a_builder_and_tensors():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(96, 5, generator=generator)
    y = (x[:, 0] > 0.5).long()

    def build(act):
        return nn.Sequential(nn.Linear(5, 16), act(), nn.Linear(16, 2))

    frame = actlab.compare(
        model=build, dataset=(x[:64], y[:64], x[64:], y[64:]), activations=["relu", "gelu"],
        seeds=2, epochs=3, batch_size=16, threads=1,
    )  # fmt: skip
    assert len(frame) == 2 * 2 * 3
    assert set(frame["activation"]) == {"relu", "gelu"}
    assert frame["test_acc"].notna().all()
    with pytest.raises(ConfigError, match="nn.Module instance"):
        actlab.compare(model=build(nn.ReLU), dataset=(x, y, x, y))


def test_counting_what_a_swap_left_does_not_import_torch_dynamo():
    """The census (a TorchDispatchMode) counted the ops, but torch wrapped its dispatch in
    torch._dynamo.disable, whose first call imported torch._dynamo and sympy: 0.7 s of every
    user-model study's start-up. A fresh interpreter, so nothing imported it before."""
    import subprocess
    import sys

    code = textwrap.dedent(
        """
        import sys
        import torch
        from torch import nn
        from actlab.nn.census import remaining_after_swap
        net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        found = remaining_after_swap(net, lambda: net(torch.ones(2, 4)), ["ReLU"], [])
        assert [(op, count) for op, _, count in found] == [("relu", 1)], found
        print("torch._dynamo" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)  # fmt: skip
    assert result.stdout.strip() == "False"
