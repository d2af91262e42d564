"""A user model's own metric function (``build.metric = mae`` with
``build.metric_higher_is_better``): measured once per member on the whole split's outputs
(actlab.engine.own_metric), recorded as val_metric/test_metric, compared under its name and
in its direction; against K plain nn.Module copies trained with torch.optim on the same
batches, through the vmap stack and member by member."""

from __future__ import annotations

import json
import math
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

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, EPOCHS = 32, 4  # diabetes: 319 train samples with a validation split, 10 steps an epoch

NETS = textwrap.dedent(
    """
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn


    def net(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(10, 16), act(), nn.Linear(16, 1))


    def mse(output, target):
        return F.mse_loss(output.squeeze(-1), target)


    def mae(output, target):
        return (output.squeeze(-1) - target).abs().mean()


    def r2(output, target):
        '''The coefficient of determination: not a mean over samples.'''
        residual = ((output.squeeze(-1) - target) ** 2).sum()
        return 1 - residual / ((target - target.mean()) ** 2).sum()


    def mae_regressor(act):
        return net(act)


    mae_regressor.loss = mse
    mae_regressor.metric = mae
    mae_regressor.metric_higher_is_better = False


    def r2_regressor(act):
        return net(act)


    r2_regressor.metric = r2
    r2_regressor.metric_higher_is_better = True


    class R2Module(nn.Module):
        metric = staticmethod(r2)
        metric_higher_is_better = True

        def __init__(self):
            super().__init__()
            self.body = net(nn.ReLU)  # actlab swaps the ReLU for each member's activation

        def forward(self, x):
            return self.body(x)


    def per_sample(act):
        return net(act)


    per_sample.metric = lambda output, target: (output.squeeze(-1) - target).abs()
    per_sample.metric_higher_is_better = False


    def nan_metric(act):
        return net(act)


    nan_metric.metric = lambda output, target: torch.tensor(math.nan)
    nan_metric.metric_higher_is_better = False


    def no_direction(act):
        return net(act)


    no_direction.metric = mae


    def raising(act):
        return net(act)


    raising.metric = lambda output, target: output @ target
    raising.metric_higher_is_better = False


    def macro_f1(output, target):
        # the mean over classes of 2 TP / (2 TP + FP + FN): not a mean over samples
        predicted = output.argmax(-1)
        scores = []
        for c in range(output.shape[-1]):
            tp = ((predicted == c) & (target == c)).sum()
            wrong = ((predicted == c) != (target == c)).sum()
            scores.append(2 * tp / max(int(2 * tp + wrong), 1))
        return torch.stack(scores).double().mean()


    def classifier(act):
        return nn.Sequential(nn.Linear(6, 16), act(), nn.Linear(16, 4))


    classifier.metric = macro_f1
    classifier.metric_higher_is_better = True
    """
)


@pytest.fixture
def nets(tmp_path):
    return user_module_file(tmp_path, NETS)


def plain_run(make, member, data, loss_fn, epochs=EPOCHS):
    """One member alone: built after manual_seed(seed), torch.optim.Adam, its seed's batch
    order (the engine's own generator), the same batches as the stacked study."""
    torch.manual_seed(member.seed)
    n = data.x_train.shape[0]
    model, _ = adam_epochs(make(), member.seed, member.lr, data, epochs, n, BATCH, loss_fn)
    return model.eval()


# === oracles =============================================================================


@pytest.mark.parametrize("stacking", ["vmap", "loop"])
@pytest.mark.parametrize(("reference", "metric"), [("mae_regressor", "mae"), ("R2Module", "r2")])
def test_own_metric_matches_plain_models_on_whole_splits(nets, stacking, reference, metric):
    """MSE training and the model's own metric (MAE: a mean; R²: not one), stacked (vmap)
    or member by member, against K plain models trained with torch.optim.Adam on the same
    batches: val_metric and test_metric are the metric of each plain model on the whole
    split. Evaluation runs in chunks of 7 samples (88 test samples: 13 chunks), so a metric
    averaged over chunks would differ for R². Tolerance rel 1e-4, abs 1e-6: the same
    training summed in another order (float32 rounding over 40 Adam steps)."""
    path, namespace = nets
    config = ExperimentConfig(
        model=f"{path}:{reference}", dataset="diabetes", activations=("relu", "tanh"),
        seeds=(0, 1), lrs=(3e-3,), epochs=EPOCHS, batch_size=BATCH, diagnostics=False,
        stacking=stacking, val_size=35, loss="mse", metric="model", metric_name=metric,
        metric_higher_is_better=metric == "r2",
    )  # fmt: skip
    assert config.task.metric == "test_metric" and config.task.metric_label == f"test {metric}"
    data = DeviceData.from_dataset(load_regression("diabetes", val_size=35), "cpu")
    trainer = Trainer(config, data)
    trainer.eval_chunk = 7
    results = [trainer.train_epoch() for _ in range(EPOCHS)]
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
    for k, member in enumerate(trainer.members):
        plain = plain_run(
            lambda m=member: namespace["net"](acts[m.activation]), member, data, namespace["mse"]
        )
        row = results[-1].metrics[k]
        with torch.no_grad():
            for split, x, y in (
                ("val", data.x_val, data.y_val),
                ("test", data.x_test, data.y_test),
            ):
                expected = namespace[metric](plain(x).double(), y.double()).item()
                assert row[f"{split}_metric"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
            mse = namespace["mse"](plain(data.x_test), data.y_test).item()
        assert row["test_loss"] == pytest.approx(mse, rel=1e-4)  # the loss stays the loss
        assert "train_metric" not in row  # no honest train-split value: not recorded


@pytest.mark.parametrize("stacking", ["vmap", "loop"])
def test_a_classifier_keeps_its_accuracy_beside_its_own_metric(nets, stacking):
    """Cross-entropy over 4 classes, compared on macro F1 (higher is better): test_acc is
    still counted, test_metric is the plain models' macro F1 on the whole test split.
    Tolerance: a prediction may flip on rounding (the same training summed in another
    order); one flip among 400 samples (about 100 a class) moves macro F1 by under 0.01."""
    path, namespace = nets
    config = ExperimentConfig(
        model=f"{path}:classifier", activations=("relu", "gelu"), seeds=(0, 1), lrs=(1e-2,),
        epochs=3, batch_size=BATCH, diagnostics=False, stacking=stacking, metric="model",
        metric_name="macro_f1", metric_higher_is_better=True,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    projection = torch.randn(6, 4, generator=gen)
    x, xt = torch.randn(320, 6, generator=gen), torch.randn(400, 6, generator=gen)
    y, yt = (x @ projection).argmax(-1), (xt @ projection).argmax(-1)
    data = DeviceData(x, y, x[:0], y[:0], xt, yt, 4, (6,))
    trainer = Trainer(config, data)
    trainer.eval_chunk = 64
    results = [trainer.train_epoch() for _ in range(3)]
    acts = {"relu": nn.ReLU, "gelu": nn.GELU}
    for k, member in enumerate(trainer.members):
        plain = plain_run(
            lambda m=member: namespace["classifier"](acts[m.activation]),
            member, data, F.cross_entropy, 3,
        )  # fmt: skip
        with torch.no_grad():
            output = plain(xt)
        row = results[-1].metrics[k]
        assert row["test_metric"] == pytest.approx(
            namespace["macro_f1"](output, yt).item(), abs=0.01
        )
        accuracy = (output.argmax(-1) == yt).double().mean().item()
        assert row["test_acc"] == pytest.approx(accuracy, abs=1 / 400 + 1e-9)
    assert results[-1].metrics[0]["test_metric"] > 0.5  # learned: chance is about 0.25


def test_metrics_csv_has_the_metric_columns_only_with_a_metric_function(nets, tmp_path, capsys):
    path, _ = nets
    out = tmp_path / "run"
    args = ["compare", "--threads", "1", "--quiet", "--model", f"{path}:mae_regressor",
            "--dataset", "diabetes", "--activations", "relu,tanh", "--seeds", "2",
            "--epochs", "1", "--lr", "3e-3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    header = (out / store.METRICS_FILE).read_text().splitlines()[0].split(",")
    assert header == list(store.metrics_columns(ExperimentConfig.from_dict(
        json.loads((out / "config.json").read_text())["config"])))  # fmt: skip
    assert header[header.index("test_acc") + 1 : header.index("test_acc") + 3] == [
        "val_metric", "test_metric"
    ]  # fmt: skip
    frame = pd.read_csv(out / store.METRICS_FILE)
    assert frame["test_metric"].notna().all() and frame["val_metric"].isna().all()  # no val
    # --metric loss given wins over the model's own metric: the usual columns
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "loss"), "--metric", "loss"]) == 0
    header = (tmp_path / "loss" / store.METRICS_FILE).read_text().splitlines()[0]
    assert header == ",".join(store.METRICS_COLUMNS)
    document = json.loads((tmp_path / "loss" / "config.json").read_text())["config"]
    assert document["metric_name"] is None and document["metric_higher_is_better"] is None


# === the report ==========================================================================


def _run_with_metric(path, values: dict[str, list[float]], higher: bool, name: str = "r2"):
    """A one-epoch regression of two activations whose final test_metric per seed is
    `values[activation]` (test_loss the same for every member)."""
    seeds = tuple(range(len(next(iter(values.values())))))
    config = ExperimentConfig(
        model=f"{path}:r2_regressor", dataset="diabetes", activations=tuple(values),
        seeds=seeds, epochs=1, metric="model", metric_name=name,
        metric_higher_is_better=higher,
    )  # fmt: skip
    rows = [
        {"depth": pd.NA, "member": i, "activation": act, "seed": seed, "lr": 1e-3, "epoch": 1,
         "train_loss": 0.5, "train_acc": math.nan, "val_loss": math.nan, "val_acc": math.nan,
         "test_loss": 0.5, "test_acc": math.nan, "val_metric": math.nan, "test_metric": value,
         "epoch_time_s": 1.0, "status": "ok"}
        for i, (act, per_seed) in enumerate(values.items())
        for seed, value in zip(seeds, per_seed, strict=True)
    ]  # fmt: skip
    metrics = pd.DataFrame(rows, columns=list(store.metrics_columns(config)))
    metrics["depth"] = metrics["depth"].astype("Int64")
    metrics["run"] = 0
    return store.RunData(paths=[], config=config, members=[], dataset={}, environment={},
                         created="", metrics=metrics, diagnostics=None)  # fmt: skip


@pytest.mark.parametrize("higher", [True, False])
def test_the_metric_direction_decides_the_best(nets, higher):
    """relu's metric is above tanh's on every one of 8 seeds: relu is best when higher is
    better, tanh when lower is; the values shown are the metric's own (never negated)."""
    from actlab.report.loss_report import loss_analysis, render_markdown, verdict

    path, _ = nets
    rng = np.random.default_rng(0)
    base = rng.normal(0.4, 0.05, 8)
    run = _run_with_metric(path, {"relu": base + 0.1, "tanh": base}, higher)
    analysis = loss_analysis(run)
    best, worst = ("relu", "tanh") if higher else ("tanh", "relu")
    assert analysis["summary"]["arm"].tolist() == [best, worst]
    lines = verdict(analysis)
    mean = (base + 0.1).mean() if higher else base.mean()
    assert lines[1].startswith(f"The best is {best} at {mean:.4f} r2")
    relation = "above" if higher else "below"
    assert lines[2].startswith(f"{best}'s test r2 is {relation} {worst}'s by 0.1000 r2")
    assert "real difference" in lines[2]
    direction = "higher is better" if higher else "lower is better"
    assert f"test r2 (your model's own metric on the whole test split; {direction})" in lines[0]
    markdown = render_markdown(analysis)
    assert "final test r2" in markdown and "accuracy" not in markdown.lower()
    assert "loss" not in lines[0].replace("mean squared error", "")


def test_a_metric_study_end_to_end_names_the_metric_and_is_resumed_only_with_it(
    nets, tmp_path, capsys
):
    path, _ = nets
    out = tmp_path / "run"
    args = ["compare", "--threads", "1", "--model", f"{path}:mae_regressor", "--dataset",
            "diabetes", "--activations", "relu,tanh", "--seeds", "3", "--epochs", "2",
            "--lr", "3e-3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    verdict = " ".join(printed[printed.index("verdict:") :].split())
    assert "final test mae" in printed and "accuracy" not in printed.lower()
    assert "test mae (your model's own metric on the whole test split; lower is better)" in verdict
    frame = pd.read_csv(out / store.METRICS_FILE)
    final = frame[frame["epoch"] == 2].groupby("activation")["test_metric"].mean()
    best = final.idxmin()
    for name in ("report.md", "report.html"):
        report = (out / name).read_text(encoding="utf-8")
        assert "mae" in report and "accuracy" not in report.lower()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"mean (not shown to be the best): {best} at {final[best]:.4f} mae" in report
    # exports: a test_metric scalar per epoch, and final_test_metric per member
    from actlab.export.rows import final_metrics, member_epochs, run_rows

    epochs = member_epochs(*run_rows(store.read_run(out)))
    assert all(e.scalars["test_metric"] > 0 for e in epochs)
    history = sorted((e for e in epochs if e.member == epochs[0].member), key=lambda e: e.epoch)
    final = final_metrics(history, False, False, own_metric=True)
    assert final["final_test_metric"] == history[-1].scalars["test_metric"]
    document = json.loads((out / "config.json").read_text())["config"]
    assert (document["metric"], document["metric_name"]) == ("model", "mae")
    assert document["metric_higher_is_better"] is False
    # the same study again: complete; with another metric: another study, refused
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--metric", "loss"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a different study" in err and "metric" in err


# === bad input ===========================================================================


@pytest.mark.parametrize(
    ("reference", "words"),
    [
        ("per_sample", "its metric metric(output, target) returned a tensor of shape (2,)"),
        ("no_direction", "needs a direction: set `metric_higher_is_better = True`"),
        ("raising", "its metric metric(output, target) raised RuntimeError"),
    ],
)
def test_a_bad_metric_is_one_line_before_training(nets, tmp_path, capsys, reference, words):
    path, _ = nets
    args = ["compare", "--threads", "1", "--model", f"{path}:{reference}", "--dataset",
            "diabetes", "--activations", "relu", "--seeds", "1", "--epochs", "1",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert words in err
    assert (
        not (tmp_path / "run" / store.METRICS_FILE).exists()
        or len(pd.read_csv(tmp_path / "run" / store.METRICS_FILE)) == 0
    )


def test_a_nan_metric_of_a_healthy_model_is_one_line(nets, tmp_path, capsys):
    path, _ = nets
    args = ["compare", "--threads", "1", "--model", f"{path}:nan_metric", "--dataset",
            "diabetes", "--activations", "relu", "--seeds", "1", "--epochs", "1",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "returned nan on 88 samples for a member whose loss there is finite" in err


def test_metric_model_needs_a_model_with_a_metric_function(nets):
    path, _ = nets
    with pytest.raises(ConfigError, match="needs --model FILE.py:NAME"):
        ExperimentConfig(dataset="diabetes", metric="model")
    with pytest.raises(ConfigError, match="defines no `metric"):
        ExperimentConfig(model=f"{path}:net", dataset="diabetes", metric="model")


def test_a_config_recording_another_direction_is_refused(nets):
    path, _ = nets
    config = ExperimentConfig(
        model=f"{path}:mae_regressor", dataset="diabetes", activations=("relu",), seeds=(0,),
        metric="model", metric_name="mae", metric_higher_is_better=True, diagnostics=False,
    )  # fmt: skip
    data = DeviceData.from_dataset(load_regression("diabetes"), "cpu")
    with pytest.raises(ConfigError, match=r"its metric is mae \(higher is better: False\)"):
        Trainer(config, data)


def test_a_module_class_states_its_metric_as_a_staticmethod(nets):
    from actlab.nn.user_model import load, own_objective

    path, _ = nets
    fields = own_objective(load(f"{path}:R2Module"))
    assert fields == {"metric": "model", "metric_name": "r2", "metric_higher_is_better": True}
