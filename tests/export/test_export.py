"""TensorBoard and MLflow exports, read back with the tools' own readers (TensorBoard's event
loader and EventAccumulator, MlflowClient), never by looking at their files."""

import csv
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.data import write_npz

from actlab.cli.main import main
from actlab.config import ExperimentConfig
from actlab.errors import ExportError
from actlab.export import live as live_export
from actlab.export import mlflow as mlflow_export
from actlab.export import rows as export_rows
from actlab.export import targets
from actlab.export import tensorboard as tensorboard_export
from actlab.study import store
from actlab.study.driver import run_study

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    return write_npz(tmp_path_factory.mktemp("data") / "small.npz", 320, 64)


@pytest.fixture(scope="module")
def run_dir(small, tmp_path_factory) -> Path:
    """8 members (2 activations x 2 lrs x 2 seeds), 2 epochs, a validation split, diagnostics;
    at lr 30, relu (both seeds) and tanh (seed 1) diverge in epoch 1."""
    out = tmp_path_factory.mktemp("runs") / "study"
    config = ExperimentConfig(dataset=small, epochs=2, hidden=(8, 8), activations=("relu", "tanh"),
                              lrs=(1e-3, 30.0), seeds=(0, 1), threads=1)  # fmt: skip
    run_study(config, out=out)
    (out / "report.md").write_text("# a report\n")  # an artifact for MLflow to keep
    return out


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """A sqlite tracking store with MLflow's tables (creating them takes seconds): copy it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def mlflow_uri(empty_db: Path, where: Path) -> str:
    shutil.copy(empty_db, where)
    return f"sqlite:///{where}"


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def expected_scalars(run: Path) -> dict[str, dict[tuple[str, int], float]]:
    """Run-directory values by TensorBoard run name: {(tag, epoch): value}."""
    study = export_rows.study_of(store.read_run(run))
    result: dict[str, dict] = {}
    for row in rows(run / store.METRICS_FILE):
        name = tensorboard_export.tensorboard_run_name(study, export_rows.member_key(row))
        values = result.setdefault(name, {})
        epoch = int(row["epoch"])
        for column in export_rows.METRIC_SCALARS:
            if row[column] != "":
                values[(column, epoch)] = float(row[column])
        values[("diverged", epoch)] = float(row["status"] == "diverged")
    diagnostics = run / store.DIAGNOSTICS_FILE
    for row in rows(diagnostics) if diagnostics.exists() else []:
        name = tensorboard_export.tensorboard_run_name(study, export_rows.member_key(row))
        for column in export_rows.DIAGNOSTIC_SCALARS:
            if row[column] != "":
                tag = f"{column}/layer{row['layer']}"
                result[name][(tag, int(row["epoch"]))] = float(row[column])
    return result


def tensorboard_events(folder: Path) -> list[tuple[str, int, float]]:
    """Every scalar (tag, step, value) in a run folder, duplicates kept."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    found = []
    for path in sorted(glob.glob(str(folder / "*tfevents*"))):
        for event in LegacyEventFileLoader(path).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.append((value.tag, event.step, value.simple_value))
    return found


def check_tensorboard(logdir: Path, run: Path) -> None:
    """Every member, epoch and column once, with the run directory's values (float32)."""
    expected = expected_scalars(run)
    for name, values in expected.items():
        events = [e for e in tensorboard_events(logdir / name) if not e[0].startswith("hparams/")]
        keys = [(tag, step) for tag, step, _ in events]
        assert len(keys) == len(set(keys)), f"{name}: an epoch written twice"
        assert set(keys) == set(values), name
        for tag, step, value in events:
            assert value == np.float32(values[(tag, step)]), (name, tag, step)


def check_mlflow(uri: str, run: Path) -> None:
    """One parent for the study, one nested child per member, each metric once per epoch."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    study = export_rows.study_of(store.read_run(run))
    experiment = client.get_experiment_by_name("actlab")
    parents = client.search_runs(
        [experiment.experiment_id], f"tags.`actlab.study_id` = '{study.study_id}' "
        "and tags.`actlab.role` = 'study'",
    )  # fmt: skip
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    expected = expected_scalars(run)
    assert len(children) == len(expected)
    for child in children:
        key = (None, child.data.params["activation"], float(child.data.params["lr"]),
               int(child.data.params["seed"]))  # fmt: skip
        values = expected[tensorboard_export.tensorboard_run_name(study, key)]
        for tag in {tag for tag, _ in values}:
            history = client.get_metric_history(child.info.run_id, tag)
            steps = [m.step for m in history]
            assert len(steps) == len(set(steps)), (child.info.run_name, tag)
            assert {(tag, m.step): m.value for m in history} == {
                k: v for k, v in values.items() if k[0] == tag
            }
        assert child.info.status == "FINISHED"
    assert parent.info.status == "FINISHED"


def test_tensorboard_export_reads_back_with_hparams_and_twice_adds_nothing(run_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    logdir = tmp_path / "tb"
    lines = targets.export_run(run_dir, {"tensorboard": str(logdir)})
    count = sum(len(values) for values in expected_scalars(run_dir).values())
    # 5 members x 2 epochs x (8 metrics + 2 x 6 + 2 diagnostics); 3 diverged epochs
    # (diverged, epoch_time_s)
    assert count == 5 * 2 * (8 + 2 * 6 + 2) + 3 * 2
    assert lines == [f"tensorboard: {logdir / 'study'} (8 runs), {count} values written"]
    check_tensorboard(logdir, run_dir)

    metrics = rows(run_dir / store.METRICS_FILE)
    study = export_rows.study_of(store.read_run(run_dir))
    last_rows = {export_rows.member_key(r): r for r in metrics}  # rows are in epoch order
    for row in last_rows.values():
        key = export_rows.member_key(row)
        diverged = row["status"] == "diverged"
        name = tensorboard_export.tensorboard_run_name(study, key)
        assert name == f"study/{row['activation']}/lr={float(row['lr']):g}/seed={row['seed']}"
        accumulator = EventAccumulator(str(logdir / name), size_guidance={"scalars": 0})
        accumulator.Reload()
        content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
        assert set(content) == {metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG,
                                metadata.SESSION_END_INFO_TAG}  # fmt: skip
        start = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG]
        )
        hparams = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
        assert hparams["activation"] == row["activation"] and hparams["lr"] == float(row["lr"])
        assert hparams["seed"] == int(row["seed"]) and hparams["depth"] == 2
        assert hparams["dataset"] == study.config.dataset and hparams["model"] == "mlp"
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        metric_tags = {m.name.tag for m in experiment.metric_infos}
        assert "hparams/final_test_acc" in metric_tags and "hparams/final_val_acc" in metric_tags
        scalar_tags = set(accumulator.Tags()["scalars"])
        assert metric_tags <= scalar_tags  # linked: each metric has its scalar in the run
        assert not metric_tags & {tag for tag, _ in expected_scalars(run_dir)[name]}
        final = accumulator.Scalars("hparams/final_test_acc")
        assert [e.step for e in final] == [int(row["epoch"])]
        assert accumulator.Scalars("hparams/diverged")[0].value == float(diverged)
        if diverged:  # in its first epoch here: no ok epoch, no final metrics
            assert row["epoch"] == "1" and np.isnan(final[0].value)
            continue
        assert final[0].value == np.float32(float(row["test_acc"]))
        best = max(float(r["test_acc"]) for r in metrics if export_rows.member_key(r) == key)
        assert accumulator.Scalars("hparams/best_test_acc")[0].value == np.float32(best)

    files = sorted(glob.glob(str(logdir / "**" / "*tfevents*"), recursive=True))
    sizes = [os.path.getsize(f) for f in files]
    lines = targets.export_run(run_dir, {"tensorboard": str(logdir)})
    assert lines[0].endswith("0 values written")
    after = sorted(glob.glob(str(logdir / "**" / "*tfevents*"), recursive=True))
    assert after == files and [os.path.getsize(f) for f in after] == sizes


def test_a_folder_of_another_study_is_refused(small, run_dir, tmp_path, capsys):
    logdir = tmp_path / "tb"
    targets.export_run(run_dir, {"tensorboard": str(logdir)})
    other = tmp_path / "study"  # the same name: the same TensorBoard run names
    config = ExperimentConfig(seeds=(0,), dataset=small, epochs=1, hidden=(8, 8), activations=("relu",),
                              threads=1, diagnostics=False)  # fmt: skip
    run_study(config, out=other)
    with pytest.raises(ExportError, match="another study's events"):
        targets.export_run(other, {"tensorboard": str(logdir)})
    assert main(["export", str(other), "--tensorboard", str(logdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose another TensorBoard directory" in err


def test_mlflow_export_nests_members_under_the_study_and_twice_adds_nothing(
    run_dir, tmp_path, empty_mlflow_db, capsys
):
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri(empty_mlflow_db, tmp_path / "mlflow.db")
    assert main(["export", str(run_dir), "--mlflow", uri]) == 0
    assert f"{5 * 2 * 22 + 3 * 2} values written" in capsys.readouterr().out
    check_mlflow(uri, run_dir)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("actlab").experiment_id
    relu = client.search_runs([experiment], "tags.activation = 'relu'")
    assert len(relu) == 4 and all(r.data.tags["actlab.role"] == "member" for r in relu)
    (parent,) = client.search_runs([experiment], "tags.`actlab.role` = 'study'")
    assert parent.data.params["activations"] == "relu,tanh"
    assert parent.data.params["lrs"] == "0.001,30.0" and parent.data.params["epochs"] == "2"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"config.json", "report.md"}
    assert Path(parent.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path)
    child = relu[0]
    assert child.data.params["model"] == "mlp" and child.data.params["depth"] == "2"
    status = {(r.data.params["lr"], r.data.params["seed"]): r.data.tags["status"] for r in relu}
    assert status == {("0.001", "0"): "ok", ("0.001", "1"): "ok",
                      ("30.0", "0"): "diverged", ("30.0", "1"): "diverged"}  # fmt: skip

    everything = client.search_runs([experiment])
    histories = {
        (r.info.run_id, key): len(client.get_metric_history(r.info.run_id, key))
        for r in everything
        for key in r.data.metrics
    }
    assert main(["export", str(run_dir), "--mlflow", uri]) == 0
    assert "0 values written" in capsys.readouterr().out
    again = client.search_runs([experiment])
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in everything)
    assert histories == {
        (r.info.run_id, key): len(client.get_metric_history(r.info.run_id, key))
        for r in again
        for key in r.data.metrics
    }


def test_log_failures_warn_once_and_the_study_completes(small, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    (tmp_path / "file").write_text("not a directory")
    warnings = []
    config = ExperimentConfig(seeds=(0,), dataset=small, epochs=3, hidden=(8,), activations=("relu",),
                              threads=1)  # fmt: skip
    specs = {"tensorboard": str(tmp_path / "file" / "tb"), "mlflow": "http://127.0.0.1:9"}
    live = live_export.LiveLog(specs, tmp_path / "run", warn=warnings.append)
    run_study(config, out=tmp_path / "run", on_epoch=live.on_epoch)
    assert live.close() == []
    assert len(warnings) == 2, warnings
    assert sorted(w.split(":")[0] for w in warnings) == [
        "--log mlflow=http",
        f"--log tensorboard={tmp_path}/file/tb",
    ]
    assert all("training goes on" in w and "actlab export" in w for w in warnings)
    assert len(rows(tmp_path / "run" / store.METRICS_FILE)) == 3


def test_log_and_export_user_errors_are_one_line(small, tmp_path, capsys, monkeypatch):
    def error(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    compare = ["compare", "--dataset", small, "--epochs", "1", "--out", str(tmp_path / "r")]
    assert "unknown log target" in error([*compare, "--log", "wandb"])
    assert "nothing to export to" in error(["export", str(tmp_path)])
    assert "not an actlab run directory" in error(["export", str(tmp_path), "--tensorboard", "x"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    assert "pip install 'actlab[mlflow]'" in error([*compare, "--log", "mlflow"])
    assert not (tmp_path / "r").exists()  # refused before any training


def test_run_names_encode_slashes_and_name_depths():
    study = export_rows.Study("s", "id", Path("s"), ExperimentConfig(), {})
    assert tensorboard_export.tensorboard_run_name(study, (None, "expr:x/2", 0.001, 3)) == (
        "s/expr:x%2F2/lr=0.001/seed=3"
    )
    assert tensorboard_export.tensorboard_run_name(study, (8, "relu", 0.01, 0)) == (
        "s/relu/depth=8/lr=0.01/seed=0"
    )
    assert targets.parse_log_specs(["tensorboard=runs/x,mlflow", "mlflow=sqlite:///a.db"]) == {
        "tensorboard": "runs/x",
        "mlflow": "sqlite:///a.db",
    }


def exported_epoch(logdir: Path, uri: str) -> int:
    """The last epoch of test_acc found in both exports (0 while either has none)."""
    from mlflow.tracking import MlflowClient

    folders = glob.glob(str(logdir / "**" / "seed=*"), recursive=True)
    tensorboard = max(
        (
            step
            for f in folders
            for tag, step, _ in tensorboard_events(Path(f))
            if tag == "test_acc"
        ),
        default=0,
    )
    if tensorboard < 2:
        return tensorboard
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("actlab")
    if experiment is None:
        return 0
    members = client.search_runs([experiment.experiment_id], "tags.`actlab.role` = 'member'")
    steps = [m.step for r in members for m in client.get_metric_history(r.info.run_id, "test_acc")]
    return min(tensorboard, max(steps, default=0))


@pytest.mark.slow
def test_sigkill_during_a_logged_run_then_resume_logs_each_epoch_once(tmp_path, empty_mlflow_db):
    data = write_npz(tmp_path / "big.npz", 2000, 200, side=28)
    run, logdir = tmp_path / "run", tmp_path / "tb"
    uri = mlflow_uri(empty_mlflow_db, tmp_path / "mlflow.db")
    command = [sys.executable, "-m", "actlab", "compare", "--dataset", data, "--epochs", "12",
               "--hidden", "64,64", "--batch-size", "32", "--activations", "relu,tanh",
               "--seeds", "1", "--threads", "1", "--no-report", "--quiet", "--device", "cpu", "--out", str(run),
               "--log", f"tensorboard={logdir}", "--log", f"mlflow={uri}"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill once epoch 2 is in both exports, while the study still trains (the resumed run
    # must then skip what the killed one exported, and export the rest).
    deadline, exported = time.monotonic() + 240, 0
    while time.monotonic() < deadline and process.poll() is None and exported < 2:
        time.sleep(0.2)
        exported = exported_epoch(logdir, uri)
    os.kill(process.pid, signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    done = torch.load(run / store.CHECKPOINT_FILE, weights_only=True)["epoch"]
    assert 2 <= done < 12, f"killed after epoch {done} (exports at {exported}): {stderr}"

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    assert len(rows(run / store.METRICS_FILE)) == 2 * 12
    check_tensorboard(logdir, run)
    check_mlflow(uri, run)


def test_mlflow_uri_is_the_environment_s_else_mlflow_s_sqlite_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_export.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    assert mlflow_export.tracking_uri() == f"sqlite:///{tmp_path}/elsewhere.db"
    assert mlflow_export.tracking_uri("sqlite:///given.db") == "sqlite:///given.db"
    assert (
        mlflow_export._sqlite_artifact_location("sqlite:///given.db")
        == (tmp_path / "mlartifacts").as_uri()
    )
    assert list(tmp_path.iterdir()) == []  # no ./mlruns, no database: nothing was written


def test_a_depth_study_exports_one_run_per_depth(small, tmp_path):
    config = ExperimentConfig(seeds=(0,), dataset=small, epochs=1, hidden=(8,), depths=(1, 3),
                              activations=("relu", "sigmoid"), threads=1)  # fmt: skip
    run_study(config, out=tmp_path / "depths")
    targets.export_run(tmp_path / "depths", {"tensorboard": str(tmp_path / "tb")})
    check_tensorboard(tmp_path / "tb", tmp_path / "depths")
    runs = sorted(str(p.relative_to(tmp_path / "tb")) for p in (tmp_path / "tb").glob("*/*/*/*/*"))
    assert runs == [f"depths/{a}/depth={d}/lr=0.001/seed=0" for a in ("relu", "sigmoid")
                    for d in (1, 3)]  # fmt: skip
    layers = {tag for tag, _, _ in tensorboard_events(tmp_path / "tb" / runs[1])}
    assert {"grad_norm/layer4", "dead_frac/layer3"} <= layers  # depth 3: 4 weight layers


def test_a_stalled_target_is_given_up_at_close_without_holding_up_the_other(
    small, tmp_path, monkeypatch
):
    """A tracking server that never answers (here: a write that blocks) costs the other
    target nothing, and `close` stops waiting for it after `stall_timeout`."""
    release = __import__("threading").Event()
    real_open = targets.open_target

    def open_target(kind, where=""):
        if kind == "tensorboard":
            return real_open(kind, where)
        target = tensorboard_export.TensorBoardTarget(tmp_path / "stalled")  # in the mlflow slot
        target.write = lambda study, batch: release.wait()
        return target

    monkeypatch.setattr(live_export, "open_target", open_target)
    warnings = []
    live = live_export.LiveLog({"tensorboard": str(tmp_path / "tb"), "mlflow": "http://x"},
                          tmp_path / "run", warn=warnings.append)  # fmt: skip
    config = ExperimentConfig(seeds=(0,), dataset=small, epochs=2, hidden=(8,), activations=("relu",),
                              threads=1, diagnostics=False)  # fmt: skip
    run_study(config, out=tmp_path / "run", on_epoch=live.on_epoch)
    start = time.monotonic()
    lines = live.close(stall_timeout=0.5)
    release.set()
    assert time.monotonic() - start < 10
    assert [line.split(":")[0] for line in lines] == ["tensorboard"]
    assert len(warnings) == 1 and "no progress for 0.5 s; stopped waiting" in warnings[0]
    check_tensorboard(tmp_path / "tb", tmp_path / "run")
