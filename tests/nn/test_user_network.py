"""The user's network stays the user's network: frozen parameters stay frozen, in-place
activations keep their semantics, ``expr:`` activations are not swapped twice, a study that
cannot fit is refused before its members are built, and the ways a real model can surprise
the trainer are one line each, never a traceback (nor a lost epoch)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import actlab.engine.memory
from actlab.cli.main import main
from actlab.config import ExperimentConfig
from actlab.engine.batches import DeviceData, batch_bounds
from actlab.engine.trainer import Trainer
from actlab.errors import ConfigError, ModelNotice
from actlab.nn.user_model import build_member, load, swap

pytestmark = pytest.mark.usefixtures("one_thread")

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
            self.backbone.requires_grad_(False)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.backbone(x))


    class SideEffect(nn.Module):
        '''An in-place activation whose result is discarded, then read through its input.'''

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 8)
            self.act = nn.ReLU(inplace=True)
            self.out = nn.Linear(8, 4)

        def forward(self, x):
            h = self.fc(x.flatten(1))
            skip = h
            h = self.act(h)
            return self.out(h + skip)


    class TwoReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act1 = nn.Linear(16, 8), nn.ReLU()
            self.fc2, self.act2 = nn.Linear(8, 8), nn.ReLU()
            self.out = nn.Linear(8, 4)

        def forward(self, x):
            return self.out(self.act2(self.fc2(self.act1(self.fc1(x.flatten(1))))))


    class Aux(nn.Module):
        '''Inception-style: (logits, aux_logits) in training, logits in evaluation.'''

        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(16, 8), nn.ReLU()
            self.out, self.aux = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            h = self.act(self.fc(x.flatten(1)))
            return (self.out(h), self.aux(h)) if self.training else self.out(h)


    class Reused(nn.Module):
        '''One ReLU module called at two places of forward.'''

        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.out(self.act(self.fc2(self.act(self.fc1(x.flatten(1))))))


    def wide(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8192), act(), nn.Linear(8192, 4))


    def batchnorm(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), act(), nn.Linear(8, 4))


    def hard_batch(act):
        class Fixed(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc, self.act, self.out = nn.Linear(16, 8), act(), nn.Linear(8, 4)

            def forward(self, x):
                return self.out(self.act(self.fc(x.reshape(64, 16))))

        return Fixed()


    def raises_in_training(act):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc, self.act, self.out = nn.Linear(16, 8), act(), nn.Linear(8, 4)

            def forward(self, x):
                if self.training:
                    raise RuntimeError("training is not supported")
                return self.out(self.act(self.fc(x.flatten(1))))

        return Net()


    def double(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), act(), nn.Linear(8, 4)).double()


    def no_parameters(act):
        return nn.Sequential(nn.Flatten(), act(), nn.Unflatten(1, (4, 4)), nn.Flatten(2),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten())


    def huge(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 40000), act(), nn.Linear(40000, 40000),
                             act(), nn.Linear(40000, 4))
    """
)


@pytest.fixture
def nets(tmp_path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def data(n: int = 40) -> DeviceData:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 4, 4, generator=generator)
    y = torch.randint(0, 4, (n,), generator=generator)
    empty = torch.zeros(0, 1, 4, 4)
    return DeviceData(x, y, empty, torch.zeros(0, dtype=torch.long), x[:8], y[:8], 4, (1, 4, 4))


def write_npz(path: Path, n_train: int = 64, n_test: int = 32) -> str:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 4, 4), dtype=np.uint8)
    y = (x.reshape(len(x), -1)[:, :4].argmax(1)).astype(np.int64)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return f"npz:{path}"


# --- frozen, in place, expr ------------------------------------------------------------


def test_frozen_parameters_stay_frozen_and_are_said(nets):
    config = ExperimentConfig(model=f"{nets}:Frozen", activations=("relu", "gelu"), seeds=(0, 1),
                              epochs=2, batch_size=8)  # fmt: skip
    with pytest.warns(ModelNotice, match=r"2 of 4 parameter tensors are frozen .*stay frozen"):
        trainer = Trainer(config, data())
    group = trainer.model.groups[0]
    before = {n: p.detach().clone() for n, p in zip(group.param_names, group.params, strict=True)}
    trainer.train_epoch()
    trainer.train_epoch()
    after = dict(zip(group.param_names, group.params, strict=True))
    for name in ("backbone.1.weight", "backbone.1.bias"):
        assert not after[name].requires_grad and torch.equal(after[name], before[name])
    assert not torch.equal(after["head.weight"], before["head.weight"])
    trained = {id(p) for p in trainer.optimizer.params}
    assert id(after["backbone.1.weight"]) not in trained  # no Adam state for it
    assert trainer.model.weight_layers() == ["head.weight"]


def test_relu_to_relu_is_the_identity_for_an_in_place_side_effect(nets):
    net = load(f"{nets}:SideEffect").factory()
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        expected = net(x)
    swapped, report = swap(net, "relu")
    assert report.count == 1
    with torch.no_grad():
        assert torch.equal(swapped(x), expected)


def test_an_in_place_module_swapped_for_gelu_stays_in_place(nets):
    net = load(f"{nets}:SideEffect").factory()
    x = torch.randn(5, 1, 4, 4)
    swapped, _ = swap(net, "gelu")
    with torch.no_grad():
        h = net.fc(x.flatten(1))
        expected = net.out(2 * F.gelu(h))  # skip is h itself: both read gelu(h)
        torch.testing.assert_close(swapped(x), expected, rtol=0, atol=1e-6)
    swapped.train()
    swapped(x).sum().backward()  # autograd accepts the in-place write
    assert swapped.fc.weight.grad is not None


def test_expr_activations_are_placed_once_and_not_traced_through(nets):
    net = load(f"{nets}:TwoReLU").factory()
    x = torch.randn(5, 1, 4, 4)
    swapped, report = swap(net, "expr:2*relu(x)")
    assert report.count == 2, report.summary()
    with torch.no_grad():
        h = 2 * F.relu(net.fc1(x.flatten(1)))
        expected = net.out(2 * F.relu(net.fc2(h)))
        torch.testing.assert_close(swapped(x), expected, rtol=0, atol=1e-6)


def test_an_expr_member_beside_relu_has_the_same_diagnostics_sites(nets):
    config = ExperimentConfig(model=f"{nets}:TwoReLU", activations=("relu", "expr:x*sigmoid(x)"),
                              seeds=(0,), epochs=1, batch_size=8)  # fmt: skip
    (result,) = [Trainer(config, data()).train_epoch()]
    sites = [r["layer"] for r in result.diagnostics if r.get("dead_frac") is not None]
    assert sites == [1, 2, 1, 2]


def test_a_reused_activation_module_is_one_diagnostics_row_with_all_its_calls(nets):
    config = ExperimentConfig(model=f"{nets}:Reused", activations=("relu", "gelu"), seeds=(0,),
                              epochs=1, batch_size=8)  # fmt: skip
    trainer = Trainer(config, data())
    result = trainer.train_epoch()
    rows = [r for r in result.diagnostics if r["member"] == 0]
    assert [r["layer"] for r in rows] == [1, 2, 3]  # the three Linear layers
    assert [r.get("dead_frac") is not None for r in rows] == [True, False, False]  # one site
    # the site's moments are over both calls: 2 x probe samples x 8 units
    params, _ = trainer.model.groups[0].state()
    w = {name: p[0].detach() for name, p in params.items()}  # member 0, trained
    x = trainer.data.x_train[trainer.probe_index]
    with torch.no_grad():
        h1 = F.linear(x.flatten(1), w["fc1.weight"], w["fc1.bias"])
        h2 = F.linear(torch.relu(h1), w["fc2.weight"], w["fc2.bias"])
    both = torch.cat([h1, h2])
    assert rows[0]["preact_mean"] == pytest.approx(both.mean().item(), rel=1e-4, abs=1e-6)


def test_the_probe_batch_does_not_depend_on_the_member_count(nets):
    """Before, 12 members of 8192 units shrank the probe to 170 samples (one member: 512)."""
    few = ExperimentConfig(model=f"{nets}:wide", activations=("relu",), seeds=(0,))
    many = few.replace(activations=("relu", "gelu", "silu"), seeds=(0, 1, 2, 3))
    probes = [Trainer(c, data(600)).probe_index for c in (few, many)]
    assert len(probes[0]) == 512 and torch.equal(probes[0], probes[1])


# --- memory -----------------------------------------------------------------------------


def test_memory_is_estimated_on_the_meta_device_before_any_member_is_built(nets, monkeypatch):
    built = []
    original = build_member

    def spy(user, activation, seed, swap_targets=(), *, device=None):
        built.append(str(device))
        return original(user, activation, seed, swap_targets, device=device)

    monkeypatch.setattr("actlab.engine.user_checks.build_member", spy)
    monkeypatch.setattr("actlab.engine.vmap_stack.build_member", spy)
    monkeypatch.setattr(actlab.engine.memory, "available_bytes", lambda device: 8 * 2**30)
    config = ExperimentConfig(model=f"{nets}:huge", activations=("relu", "gelu"), seeds=(0, 1, 2))
    with pytest.raises(
        ConfigError, match=r"the 6 members .* need about .* about 0 members would fit"
    ):
        Trainer(config, data())
    # One member per activation (their sizes may differ: gated FFNs), on the meta device:
    # 6.4 GB of weights per member, none was allocated.
    assert built == ["meta", "meta"]


# --- one line, never a traceback ------------------------------------------------------------


def test_a_tuple_output_in_training_uses_its_first_element(nets):
    config = ExperimentConfig(model=f"{nets}:Aux", activations=("relu", "silu"), seeds=(0,),
                              epochs=1, batch_size=8)  # fmt: skip
    with pytest.warns(
        ModelNotice, match=r"no gradient of the logits .* reaches aux.weight, aux.bias"
    ):
        trainer = Trainer(config, data())
    (result,) = [trainer.train_epoch()]
    assert all(row["status"] == "ok" for row in result.metrics)
    assert "aux.weight" not in trainer.model.weight_layers()


def test_batchnorm_merges_a_last_batch_of_one_sample(nets):
    assert batch_bounds(41, 8, merge_single=True)[-1] == (32, 41)
    assert batch_bounds(41, 8)[-1] == (40, 41)
    assert batch_bounds(42, 8, merge_single=True)[-1] == (40, 42)
    config = ExperimentConfig(model=f"{nets}:batchnorm", activations=("relu",), seeds=(0,),
                              epochs=1, batch_size=8)  # fmt: skip
    with pytest.warns(ModelNotice, match=r"last batch .* 1 sample .* merged"):
        trainer = Trainer(config, data(41))
    (row,) = trainer.train_epoch().metrics
    assert row["status"] == "ok"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hard_batch", r"an? (evaluation|training) forward pass on a batch of shape \(2, 1, 4, 4\) "
                       r"\(the dataset's\) raised RuntimeError: shape '\[64, 16\]'"),
        ("raises_in_training", r"a training forward pass .* raised RuntimeError: training is not"),
        ("double", r"has float64 parameters; actlab trains in float32"),
        ("no_parameters", r"has no trainable parameters"),
    ],
)  # fmt: skip
def test_surprising_models_are_one_line_errors(nets, tmp_path, capsys, name, message):
    dataset = write_npz(tmp_path / "d.npz")
    code = main(["compare", "--model", f"{nets}:{name}", "--dataset", dataset, "--epochs", "1",
                 "--seeds", "1", "--threads", "1", "--quiet", "--no-report",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("actlab: error: "), err
    assert re.search(message, err), err


def test_swap_with_a_builder_is_refused(nets, tmp_path, capsys):
    dataset = write_npz(tmp_path / "d.npz")
    code = main(["compare", "--model", f"{nets}:batchnorm", "--swap", "relu", "--dataset", dataset,
                 "--epochs", "1", "--seeds", "1", "--quiet", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "is a builder, which places act() itself" in err


def test_huge_depths_are_one_line(nets, tmp_path, capsys):
    dataset = write_npz(tmp_path / "d.npz")
    code = main(["compare", "--depths", "99999999999999999999", "--dataset", dataset, "--epochs",
                 "1", "--seeds", "1", "--quiet", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("actlab: error: "), err


def test_resuming_through_another_relative_path_is_the_same_study(nets, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    dataset = write_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    options = ["compare", "--dataset", dataset, "--activations", "relu,gelu", "--seeds", "1",
               "--threads", "1", "--quiet", "--no-report", "--out", str(run)]  # fmt: skip
    assert main([*options, "--model", "nets.py:TwoReLU", "--epochs", "1"]) == 0
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    capsys.readouterr()
    code = main([*options, "--model", "../nets.py:TwoReLU", "--epochs", "2", "--resume"])
    assert code == 0, capsys.readouterr().err
