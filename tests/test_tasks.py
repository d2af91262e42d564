"""Tasks beyond classification: the ``regress`` task on real data (diabetes, MSE), a user
model's own loss, --loss/--metric, and outputs of other shapes (a regression's (batch, 1),
a sequence's (batch, time, classes)) through the vmap stack and member by member, each
against K plain nn.Module copies trained with torch.optim on the same batches."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fixtures.engine import adam_epochs, user_module_file
from torch import nn

from actlab.cli.main import main
from actlab.config import ExperimentConfig
from actlab.data.regression import load_regression
from actlab.engine.trainer import DeviceData, Trainer
from actlab.errors import ConfigError
from actlab.study import store
from actlab.tasks import REGRESS

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, EPOCHS = 32, 6  # diabetes: 354 train samples, 12 steps an epoch: 72 Adam steps

NETS = textwrap.dedent(
    """
    import torch.nn.functional as F
    from torch import nn


    def regressor(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(10, 16), act(), nn.Linear(16, 1))


    def own_loss(output, target):
        return F.mse_loss(output.squeeze(-1), target)


    def own_regressor(act):
        return regressor(act)


    own_regressor.loss = own_loss
    own_regressor.metric = "loss"


    def bad_loss_regressor(act):
        return regressor(act)


    bad_loss_regressor.loss = lambda output, target: (output.squeeze(-1) - target) ** 2


    def tagger(act):
        '''A per-position classifier: (batch, time, features) -> (batch, time, classes).'''
        return nn.Sequential(nn.Linear(6, 16), act(), nn.Linear(16, 5))
    """
)


@pytest.fixture
def nets(tmp_path):
    return user_module_file(tmp_path, NETS)


def diabetes_data() -> DeviceData:
    return DeviceData.from_dataset(load_regression("diabetes"), "cpu")


def sequence_data(n_train: int = 192, n_test: int = 64) -> DeviceData:
    """Sequences of 7 positions of 6 features; each position's class is the argmax of a
    fixed linear map of its features (learnable)."""
    gen = torch.Generator().manual_seed(3)
    projection = torch.randn(6, 5, generator=gen)

    def split(n):
        x = torch.randn(n, 7, 6, generator=gen)
        return x, (x @ projection).argmax(-1)

    (x, y), (xt, yt) = split(n_train), split(n_test)
    return DeviceData(x, y, x[:0], y[:0], xt, yt, 5, (7, 6))


def plain_run(make, member, data, loss_fn, epochs=EPOCHS):
    """One member alone: built after manual_seed(seed), torch.optim.Adam, its seed's batch
    order. Returns the model and the mean step loss of each epoch."""
    torch.manual_seed(member.seed)
    n = data.x_train.shape[0]
    return adam_epochs(make(), member.seed, member.lr, data, epochs, n, BATCH, loss_fn)


def trained(config, data):
    trainer = Trainer(config, data)
    assert trainer.model.fallbacks == []
    return trainer, [trainer.train_epoch() for _ in range(config.epochs)]


def member_weights(trainer, k):
    """Member k's parameters, in its plain model's order, from the stacked groups."""
    for group in trainer.model.groups:
        if k in group.members:
            i = group.members.index(k)
            return [p[i].detach() for p in group.params]
    raise AssertionError(k)


# === oracles =============================================================================


@pytest.mark.parametrize("stacking", ["vmap", "loop"])
@pytest.mark.parametrize("reference", ["own_regressor", "regressor"])
def test_stacked_regression_matches_plain_models(nets, stacking, reference):
    """A user's regressor with its own loss (`own_regressor.loss`) or --loss mse, stacked
    (vmap) or member by member, against K plain models with torch.optim.Adam over 72 steps
    on real data: per-epoch train MSE, final weights and test MSE agree to float rounding
    (the same math summed in another order: rtol 1e-4)."""
    path, namespace = nets
    config = ExperimentConfig(
        model=f"{path}:{reference}", dataset="diabetes", activations=("relu", "tanh"),
        seeds=(0, 1), lrs=(3e-3,), epochs=EPOCHS, batch_size=BATCH, diagnostics=False,
        stacking=stacking, loss="model" if reference == "own_regressor" else "mse",
    )  # fmt: skip
    assert config.task.metric == "test_loss" and not config.task.higher_is_better
    data = diabetes_data()
    trainer, results = trained(config, data)
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
    for k, member in enumerate(trainer.members):
        plain, losses = plain_run(
            lambda m=member: namespace["regressor"](acts[m.activation]),
            member, data, namespace["own_loss"],
        )  # fmt: skip
        stacked = [r.metrics[k]["train_loss"] for r in results]
        torch.testing.assert_close(stacked, losses, rtol=1e-4, atol=1e-6)
        for mine, theirs in zip(member_weights(trainer, k), plain.parameters(), strict=True):
            torch.testing.assert_close(mine, theirs.detach(), rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            test_mse = namespace["own_loss"](plain(data.x_test), data.y_test).item()
        final = results[-1].metrics[k]
        assert final["test_loss"] == pytest.approx(test_mse, rel=1e-4)
        assert final["train_acc"] is None and final["test_acc"] is None


@pytest.mark.parametrize("stacking", ["vmap", "loop"])
def test_sequence_outputs_train_on_token_cross_entropy_and_count_every_position(nets, stacking):
    """Outputs (batch, time, classes) against targets (batch, time): the member's loss is
    the mean cross-entropy over every position, its accuracy counts every position."""
    path, namespace = nets
    config = ExperimentConfig(
        model=f"{path}:tagger", activations=("relu", "gelu"), seeds=(0, 1), lrs=(1e-2,),
        epochs=3, batch_size=BATCH, diagnostics=False, stacking=stacking,
    )  # fmt: skip
    data = sequence_data()
    trainer, results = trained(config, data)

    def token_ce(output, target):
        return F.cross_entropy(output.reshape(-1, 5), target.reshape(-1))

    acts = {"relu": nn.ReLU, "gelu": nn.GELU}
    for k, member in enumerate(trainer.members):
        plain, losses = plain_run(
            lambda m=member: namespace["tagger"](acts[m.activation]), member, data, token_ce, 3
        )
        torch.testing.assert_close(
            [r.metrics[k]["train_loss"] for r in results], losses, rtol=1e-4, atol=1e-6
        )
        with torch.no_grad():
            output = plain(data.x_test)
            accuracy = (output.argmax(-1) == data.y_test).double().mean().item()
            test_loss = token_ce(output, data.y_test).item()
        final = results[-1].metrics[k]
        assert final["test_loss"] == pytest.approx(test_loss, rel=1e-4)
        # one of 64 * 7 predictions may flip on rounding
        assert final["test_acc"] == pytest.approx(accuracy, abs=1 / 448 + 1e-9)


def test_builtin_mlp_regresses_with_autograd_like_plain_models():
    """--net mlp on diabetes: an output width of 1, MSE (the hand-written fused step is for
    cross-entropy, so a regression trains with autograd), against the members exported as
    plain nn.Sequential before training and trained with torch.optim.Adam."""
    config = ExperimentConfig(
        dataset="diabetes", activations=("relu", "tanh"), seeds=(0, 1), lrs=(3e-3,),
        hidden=(16,), epochs=EPOCHS, batch_size=BATCH, diagnostics=False, device="cpu",
    )  # fmt: skip
    assert config.task is REGRESS
    data = diabetes_data()
    trainer = Trainer(config, data)
    assert trainer.mlp_step is None
    plains = [trainer.model.export_member(k) for k in range(len(trainer.members))]
    results = [trainer.train_epoch() for _ in range(EPOCHS)]

    def mse(output, target):
        return F.mse_loss(output.squeeze(-1), target)

    for k, member in enumerate(trainer.members):
        _, losses = plain_run(lambda p=plains[k]: p, member, data, mse)
        stacked = [r.metrics[k]["train_loss"] for r in results]
        torch.testing.assert_close(stacked, losses, rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            test_mse = mse(plains[k](data.x_test), data.y_test).item()
        assert results[-1].metrics[k]["test_loss"] == pytest.approx(test_mse, rel=1e-4)
    assert results[-1].metrics[0]["test_loss"] < 0.8  # learned: the train mean scores ~1.0


# === the diabetes data ===================================================================


def test_diabetes_split_is_fixed_and_standardised_with_train_statistics_only():
    data = load_regression("diabetes", val_size=0.1)
    assert (data.train_size, data.val_size, data.test_size) == (319, 35, 88)
    x = data.x_train.reshape(len(data.x_train), -1).double()
    torch.testing.assert_close(x.mean(0), torch.zeros(10, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(10, dtype=torch.float64),
                               atol=1e-5, rtol=0)  # fmt: skip
    assert abs(float(data.y_train.double().mean())) < 1e-6
    assert abs(float(data.x_test.mean())) > 1e-3  # test statistics were not used
    again = load_regression("diabetes", val_size=0.1)
    assert again.fingerprint() == data.fingerprint()
    summary = data.summary()
    assert summary["task"] == "regress" and summary["target_std"] > 1


# === end to end ==========================================================================


def test_regression_study_end_to_end_reports_mse_lower_is_better(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["compare", "--threads", "1", "--dataset", "diabetes", "--activations",
            "relu,tanh", "--seeds", "3", "--epochs", "2", "--hidden", "16", "--lr", "3e-3",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    verdict = printed[printed.index("verdict:") :]
    assert "final test MSE" in printed and "bpc" not in printed
    assert "mean squared error (MSE; lower is better)" in " ".join(verdict.split())
    assert "accuracy" not in verdict
    metrics = pd.read_csv(out / store.METRICS_FILE)
    assert len(metrics) == 2 * 3 * 2 and (metrics["status"] == "ok").all()
    assert metrics[["train_acc", "test_acc"]].isna().all().all()
    final = metrics[metrics["epoch"] == 2].groupby("activation")["test_loss"].mean()
    best = final.idxmin()  # lower is better: the best arm has the lowest MSE
    for name in ("report.md", "report.html"):
        report = (out / name).read_text(encoding="utf-8")
        assert "MSE" in report and "accuracy" not in report.lower() and "bpc" not in report
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"Lowest mean (not shown to be the best): {best} at {final[best]:.4f} MSE" in report
    # the MLP's diagnostics by its own layers, never a transformer's names or probe
    diagnostics = report[report.index("## Diagnostics") : report.index("## Environment")]
    assert "| layer 1 |" in diagnostics and "| layer 2 |" in diagnostics  # one hidden layer
    for gpt_word in ("embedding", "FFN", "block", "attention", "windows"):
        assert gpt_word not in diagnostics, gpt_word
    document = json.loads((out / "config.json").read_text())
    assert document["dataset"]["task"] == "regress"
    # a resume with another loss is another study
    assert main([*args, "--loss", "l1"]) != 0
    assert "holds a different study (loss 'mse' there, 'l1' asked" in capsys.readouterr().err
    assert main([*args, "--loss", "mse"]) == 0  # the same study: already complete


def test_a_user_loss_is_recorded_and_named_in_the_report(nets, tmp_path, capsys):
    path, _ = nets
    out = tmp_path / "run"
    args = ["compare", "--threads", "1", "--quiet", "--model", f"{path}:own_regressor",
            "--dataset", "diabetes", "--activations", "relu,tanh", "--seeds", "2",
            "--epochs", "1", "--lr", "3e-3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    document = json.loads((out / "config.json").read_text())
    assert document["config"]["loss"] == "model" and document["config"]["metric"] == "loss"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "the model's own loss" in report and "accuracy" not in report.lower()


# === bad input ===========================================================================


def test_an_unknown_loss_name_is_one_line_with_the_nearest(capsys):
    assert main(["compare", "--dataset", "diabetes", "--loss", "mae_loss"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "unknown --loss 'mae_loss'" in err and "did you mean" in err


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"metric": "accurcy"}, "unknown --metric 'accurcy'; did you mean accuracy"),
        ({"dataset": "diabetes", "loss": "cross_entropy"}, "is a regression"),
        ({"loss": "mse", "metric": "accuracy"}, "--metric accuracy needs a classification loss"),
        ({"loss": "huber", "metric": "mae"}, "--metric mae is recorded as the test loss"),
        ({"loss": "model"}, "--loss model is your own model's `loss` attribute"),
    ],
)
def test_objective_options_that_cannot_work_are_refused(changes, words):
    with pytest.raises(ConfigError, match=words):
        ExperimentConfig(**changes)


def test_a_loss_that_returns_a_non_scalar_is_one_clear_line(nets, tmp_path, capsys):
    path, _ = nets
    args = ["compare", "--threads", "1", "--quiet", "--model", f"{path}:bad_loss_regressor",
            "--dataset", "diabetes", "--activations", "relu", "--seeds", "1", "--epochs", "1",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "its loss(output, target) returned a tensor of shape (2,)" in err
    assert "one scalar tensor" in err


def test_a_regression_output_of_the_wrong_width_is_one_line(tmp_path, capsys):
    path = tmp_path / "wide.py"
    path.write_text(
        "from torch import nn\n\ndef build(act):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(10, 8), act(), nn.Linear(8, 3))\n"
    )
    args = ["compare", "--threads", "1", "--quiet", "--model", f"{path}:build", "--dataset",
            "diabetes", "--activations", "relu", "--seeds", "1", "--epochs", "1",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "its output (2, 3) does not match the targets (2,) (batch first) for --loss mse" in err


def test_regress_task_writes_its_metric_plainly():
    assert REGRESS.format(0.41234) == "0.4123 MSE" and REGRESS.direction == "lower is better"
    assert not REGRESS.has_accuracy
    assert np.isclose(REGRESS.scale, 1.0)


def test_the_metric_follows_the_loss_and_the_dataset():
    from actlab.tasks import CLASSIFY, with_objective

    assert with_objective(REGRESS, "mse", None) is REGRESS  # --loss mse: the same study
    assert with_objective(CLASSIFY, "cross_entropy", None) == CLASSIFY
    own = with_objective(CLASSIFY, "model", None)  # a classifier's own loss: accuracy
    assert own.metric == "test_acc" and own.higher_is_better
    l1 = with_objective(REGRESS, "l1", "mae")
    assert (l1.metric, l1.short, l1.higher_is_better) == ("test_loss", "MAE", False)
    assert l1.format(0.25) == "0.2500 MAE"
    on_loss = with_objective(CLASSIFY, None, "loss")
    assert on_loss.metric == "test_loss" and on_loss.direction == "lower is better"


def test_a_regression_member_that_blows_up_is_frozen_and_the_others_go_on():
    """The divergence limit of a regression loss is 100 x the loss of predicting the train
    mean (1.0 for the standardised diabetes target): lr 30 crosses it in its first epoch."""
    config = ExperimentConfig(
        dataset="diabetes", activations=("relu",), seeds=(0,), lrs=(3e-3, 30.0), hidden=(16,),
        epochs=2, batch_size=BATCH, diagnostics=False, select="final", device="cpu",
    )  # fmt: skip
    trainer = Trainer(config, diabetes_data())
    assert trainer._loss_limit == pytest.approx(100.0, rel=1e-6)
    first, second = trainer.train_epoch(), trainer.train_epoch()
    assert [row["status"] for row in first.metrics] == ["ok", "diverged"]
    assert [row["lr"] for row in second.metrics] == [3e-3]
    assert second.metrics[0]["test_loss"] < first.metrics[0]["test_loss"]


def test_a_module_class_states_its_loss_as_a_staticmethod(tmp_path):
    from actlab.nn.user_model import load, own_loss, own_objective

    path = tmp_path / "classes.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F
            from torch import nn

            class Good(nn.Module):
                metric = "loss"

                def __init__(self):
                    super().__init__()
                    self.net = nn.Sequential(nn.Flatten(), nn.Linear(10, 4), nn.ReLU(),
                                             nn.Linear(4, 1))

                def forward(self, x):
                    return self.net(x)

                @staticmethod
                def loss(output, target):
                    return F.l1_loss(output.squeeze(-1), target)

            class Method(Good):
                def loss(self, output, target):
                    return F.l1_loss(output.squeeze(-1), target)

            class BadMetric(Good):
                metric = "r2"
            """
        )
    )
    good = load(f"{path}:Good")
    assert own_objective(good) == {"loss": "model", "metric": "loss"}
    assert own_loss(good)(torch.ones(3, 1), torch.zeros(3)).item() == 1.0
    with pytest.raises(ConfigError, match="make it a @staticmethod"):
        own_loss(load(f"{path}:Method"))
    with pytest.raises(ConfigError, match="its `metric` attribute must name .* got 'r2'"):
        own_objective(load(f"{path}:BadMetric"))


def test_a_misspelt_regression_dataset_gets_its_name_back(tmp_path, capsys):
    assert main(["compare", "--dataset", "diabetis", "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert "did you mean 'diabetes'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
