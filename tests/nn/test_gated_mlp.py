"""``--net mlp`` with gated activations (swiglu, geglu beside relu): actlab.nn.mlp_builder.

Before, the built-in MLP refused them ("activation 'swiglu' is not elementwise and cannot
be used in an MLP hidden layer"). Now:

- a gated hidden layer is Linear(in, 2h) -> a * gate(b), h chosen so that the member has
  the plain member's parameter count (the 2/3 rule of Shazeer 2020 is ~26% off in an MLP
  whose first fan-in is the image), and the counts are printed;
- a 50-step oracle: K plain nn.Module MLPs, the gated layer written by hand here, trained
  one by one with torch.optim.Adam on the same batches (losses and final weights);
- the relu members of a mixed study give the numbers of a relu-only (fused-step) study;
- extract gives a plain module that reproduces the recorded test accuracy; a run killed
  (SIGKILL) at any durable write resumes to the rows of an uninterrupted one.
"""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fixtures.cli import run_cli
from fixtures.engine import adam_epochs
from fixtures.kill import durable_calls, quiet_main, rows
from torch import nn

from actlab.config import ExperimentConfig
from actlab.engine.trainer import DeviceData, Trainer
from actlab.errors import ConfigError
from actlab.nn import mlp_builder
from actlab.study import store
from actlab.study.driver import load_study_dataset
from actlab.study.extract import extract_member

pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH, EPOCHS = 40, 8, 10  # 5 steps an epoch: 50 steps
CLASSES, FAN_IN, HIDDEN = 3, 36, (12, 12)
ACTIVATIONS = ("relu", "swiglu", "geglu")
GATES = {"swiglu": F.silu, "geglu": F.gelu}  # a * silu(b), a * gelu(b) (Shazeer 2020)


class HandMLP(nn.Module):
    """The oracle: an MLP whose gated layers are written out, [a, b] = x W^T + c."""

    def __init__(self, activation: str, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.gate = GATES.get(activation)
        m = 2 if self.gate else 1
        sizes = [FAN_IN, *widths]
        self.hidden = nn.ModuleList(
            nn.Linear(i, m * o) for i, o in zip(sizes, sizes[1:], strict=False)
        )
        self.out = nn.Linear(sizes[-1], CLASSES)

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.hidden:
            z = layer(h)
            if self.gate is None:
                h = torch.relu(z)
            else:
                a, b = z[:, : z.shape[1] // 2], z[:, z.shape[1] // 2 :]
                h = a * self.gate(b)
        return self.out(h)


def device_data() -> DeviceData:
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(N, 1, 6, 6, generator=generator)
    y = torch.randint(0, CLASSES, (N,), generator=generator)
    empty = torch.zeros(0, 1, 6, 6)
    return DeviceData(
        x, y, empty, torch.zeros(0, dtype=torch.long), x[:16], y[:16], CLASSES, (1, 6, 6)
    )


def config(**changes) -> ExperimentConfig:
    values = dict(
        model="mlp", hidden=HIDDEN, activations=ACTIVATIONS, seeds=(0, 1), lrs=(3e-3,),
        epochs=EPOCHS, batch_size=BATCH, diagnostics=False,
    )  # fmt: skip
    values.update(changes)
    return ExperimentConfig(**values)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# === widths and parameter counts ==========================================================


def test_gated_widths_match_the_plain_parameter_count_where_two_thirds_does_not():
    plain = mlp_builder.mlp_parameters(784, (128, 128), 10, gated=False)
    assert plain == 118_282  # 784*128+128 + 128*128+128 + 128*10+10
    two_thirds = mlp_builder.mlp_parameters(784, (85, 85), 10, gated=True)
    assert two_thirds / plain - 1 > 0.25  # the FFN rule over-sizes an MLP by a quarter
    widths = mlp_builder.gated_widths(784, (128, 128), 10)
    assert widths == (69, 69)  # 2 h^2 + 1582 h + 10 nearest 118,282
    gated = mlp_builder.mlp_parameters(784, widths, 10, gated=True)
    assert abs(gated / plain - 1) < 0.005
    for h in (68, 70):  # the neighbours are further off
        other = mlp_builder.mlp_parameters(784, (h, h), 10, gated=True)
        assert abs(other - plain) > abs(gated - plain)
    assert mlp_builder.gated_widths(784, (256, 64), 10)[0] > 4 * 30  # proportions kept


def test_printed_counts_are_those_of_the_plain_modules():
    line = mlp_builder.parameter_line(config(), (1, 6, 6), CLASSES)
    counts = {}
    for part in line.removeprefix("parameters per member: ").split("), "):
        name, number = part.split()[:2]
        counts[name] = int(number.replace(",", ""))
    widths = mlp_builder.gated_widths(FAN_IN, HIDDEN, CLASSES)
    assert widths == (7, 7)  # 2 h^2 + 79 h + 3 = 654 for h = 7, nearest 639
    assert counts["relu"] == count(HandMLP("relu", HIDDEN)) == 639
    assert counts["swiglu"] == counts["geglu"] == count(HandMLP("swiglu", widths)) == 654
    assert "differ by" in line  # 654 / 639: 2.3%, said (a net this small cannot match)
    built = mlp_builder.plain_mlp("swiglu", FAN_IN, widths, CLASSES)
    assert count(built) == 654


# === training: the oracle =================================================================


def hand_run(activation: str, seed: int, lr: float, data: DeviceData):
    """One member alone: nn.Linear's own init after manual_seed(seed), Adam, its seed's
    batch order."""
    widths = mlp_builder.member_widths(activation, FAN_IN, HIDDEN, CLASSES)
    torch.manual_seed(seed)
    model = HandMLP(activation, widths)
    return adam_epochs(model, seed, lr, data, EPOCHS, N, BATCH)


def member_weights(trainer: Trainer, k: int) -> list[torch.Tensor]:
    for group in trainer.model.groups:
        if k in group.members:
            i = group.members.index(k)
            return [p[i].detach() for p in group.params]
    raise KeyError(k)


@pytest.mark.parametrize("stacking", ["auto", "vmap"])
def test_gated_mlp_members_match_plain_modules_trained_one_by_one(stacking):
    """Before: ConfigError (not elementwise). The same math summed in another order (vmap
    batches the members' GEMMs): rtol 1e-4 on the losses over 50 Adam steps, 1e-3 on the
    weights (Adam divides by sqrt(v): rounding in tiny gradients is scaled up)."""
    data = device_data()
    with torch.random.fork_rng(devices=[]):
        trainer = Trainer(config(stacking=stacking), data)
        results = [trainer.train_epoch() for _ in range(EPOCHS)]
        for k, member in enumerate(trainer.members):
            plain, losses = hand_run(member.activation, member.seed, member.lr, data)
            stacked = [r.metrics[k]["train_loss"] for r in results]
            torch.testing.assert_close(stacked, losses, rtol=1e-4, atol=1e-5)
            theirs = [p.detach() for p in plain.parameters()]
            mine = member_weights(trainer, k)
            assert [t.shape for t in mine] == [t.shape for t in theirs]
            for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"{k} {i}")


@pytest.mark.parametrize("init", [{}, {"init": "kaiming", "init_gain": True}])
def test_relu_in_a_mixed_study_gives_the_numbers_of_a_relu_only_study(init):
    """The fused MLP step (relu alone) and the vmap stack (relu beside swiglu) start from the
    same weights (every --init, with its gains) and batches; their kernels sum in another
    order: rtol 1e-5."""
    data = device_data()
    fused = Trainer(config(activations=("relu",), epochs=3, **init), data)
    mixed = Trainer(config(activations=("relu", "swiglu"), epochs=3, **init), data)
    assert fused.mlp_step is not None and mixed.mlp_step is None
    first = mixed.model.groups[0].params[0][0]
    assert torch.equal(first, fused.model.weights[0][0])  # the same draws, bit for bit
    for _ in range(3):
        alone, beside = fused.train_epoch(), mixed.train_epoch()
        for k, seed in ((0, 0), (1, 1)):
            row = alone.metrics[k]
            other = beside.metrics[2 * k]
            assert other["seed"] == seed and other["activation"] == "relu"
            for key in ("train_loss", "test_loss", "test_acc"):
                assert other[key] == pytest.approx(row[key], rel=1e-5, abs=1e-6), key


def test_diagnostics_of_gated_members_are_those_of_their_gate():
    """geglu = a * gelu(b), swiglu = a * silu(b): dead fraction and moments on b."""
    data = device_data()
    trainer = Trainer(config(seeds=(0,), diagnostics=True, epochs=1), data)
    with torch.no_grad():  # b's bias of units 2..4 of the first layer very negative
        group = trainer.model.groups[1]
        assert group.activation == "swiglu"
        group.params[1][0, 7 + 2 : 7 + 5] = -100.0
    out = trainer.model.probe(data.x_train[:16], data.y_train[:16])
    plain = mlp_builder.plain_mlp("swiglu", FAN_IN, (7, 7), CLASSES)
    for p, value in zip(plain.parameters(), member_weights(trainer, 1), strict=True):
        p.data.copy_(value)
    b = plain[1](plain[0](data.x_train[:16])).detach()[:, 7:]
    assert out["preact_mean"][1, 0].item() == pytest.approx(b.mean().item(), rel=1e-5)
    assert torch.isfinite(out["dead_frac"]).all()


# === the CLI: counts, path, extract, resume ================================================


@pytest.mark.slow
def test_the_cli_trains_extracts_and_resumes_a_gated_mlp(tmp_path):
    common = ("compare", "--dataset", "digits", "--activations", "relu,swiglu,geglu",
              "--hidden", "32,32", "--seeds", "2", "--threads", "1")  # fmt: skip
    code, out, err = run_cli(*common, "--epochs", "2", "--out", tmp_path / "straight")
    assert code == 0, err
    printed = out + err
    assert "parameters per member: relu " in printed and "swiglu" in printed
    assert "gated, hidden 2x" in printed and "vmap stack" in printed
    straight = pd.read_csv(tmp_path / "straight" / store.METRICS_FILE)
    config_json = (tmp_path / "straight" / store.CONFIG_FILE).read_text()
    assert '"model": "mlp"' in config_json
    # resume: one epoch, then continued to two, gives the rows of two at once
    assert run_cli(*common, "--epochs", "1", "--quiet", "--out", tmp_path / "twice")[0] == 0
    assert run_cli(*common, "--epochs", "2", "--quiet", "--out", tmp_path / "twice")[0] == 0
    twice = pd.read_csv(tmp_path / "twice" / store.METRICS_FILE)
    drop = ["epoch_time_s"]
    pd.testing.assert_frame_equal(straight.drop(columns=drop), twice.drop(columns=drop))
    # extract: a plain module that loads and gives the recorded test accuracy
    path = tmp_path / "swiglu.pt"
    code, _, err = run_cli("extract", tmp_path / "straight", "--activation", "swiglu",
                           "--seed", "1", "-o", path)  # fmt: skip
    assert code == 0, err
    extracted = extract_member(tmp_path / "straight", "swiglu", 1)
    assert "plain_mlp('swiglu', 64" in extracted.constructor
    widths = mlp_builder.gated_widths(64, (32, 32), 10)
    module = mlp_builder.plain_mlp("swiglu", 64, widths, 10)
    module.load_state_dict(torch.load(path))
    module.eval()
    run = store.read_run(tmp_path / "straight")
    dataset = load_study_dataset(run.config)
    with torch.no_grad():
        logits = module(dataset.float_inputs(dataset.x_test))
        accuracy = (logits.argmax(1) == dataset.y_test).float().mean().item()
    row = straight[(straight.activation == "swiglu") & (straight.seed == 1)].iloc[-1]
    recorded = row["test_acc"] / (100 if row["test_acc"] > 1 else 1)
    # the same predictions: within half an image (the engine divides in float64)
    assert accuracy == pytest.approx(recorded, abs=0.5 / len(dataset.y_test))


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_rows_of_an_uninterrupted_run(tmp_path):
    """Killed at a durable write (the checkpoint or a CSV of either epoch), the rerun
    resumes from the last completed epoch and writes the uninterrupted run's rows."""

    def command(out):
        return ["compare", "--dataset", "digits", "--activations", "relu,swiglu",
                "--hidden", "16", "--seeds", "2", "--epochs", "3", "--threads", "1",
                "--quiet", "--out", str(out)]  # fmt: skip

    reference = tmp_path / "reference"
    total = durable_calls(command(reference))
    expected = rows(reference, store.METRICS_FILE)
    for kill_at in sorted({int(p) for p in np.linspace(3, total - 2, 3).round()}):
        run = tmp_path / f"killed-{kill_at}"
        assert durable_calls(command(run), kill_at, truncate=True) == signal.SIGKILL
        assert quiet_main(command(run)) == 0, f"rerun after a kill at call {kill_at}"
        pd.testing.assert_frame_equal(rows(run, store.METRICS_FILE), expected, check_exact=True)


def test_the_cnn_refuses_a_gated_unit_in_one_line_that_names_where_it_runs():
    with pytest.raises(ConfigError, match="gated unit runs in --net mlp, --net gpt") as error:
        Trainer(config(model="cnn", hidden=(8,), activations=("relu", "swiglu")), device_data())
    assert "\n" not in str(error.value)
