"""The writing half of actlab.study.store: lock, config.json, append-only CSVs, atomic
checkpoints, and truncation of rows beyond the checkpoint when a run is reopened."""

import dataclasses
import json

import pytest
import torch

from actlab.config import ExperimentConfig, members_for
from actlab.errors import RunDirError
from actlab.study import store

CONFIG = ExperimentConfig(dataset="generated", activations=("relu", "tanh"), epochs=3)
DATASET = {"name": "generated", "input_shape": [1, 8, 8], "num_classes": 4}


def open_dir(path, config=CONFIG, **kwargs):
    return store.open_run_dir(
        path,
        config,
        members=[dataclasses.asdict(m) for m in members_for(config)],
        dataset=DATASET,
        environment=store.describe_environment("cpu", 1),
        **kwargs,
    )


def rows(epoch, depth=None):
    return [
        {"depth": depth, "member": k, "activation": a, "seed": 0, "lr": 1e-3, "epoch": epoch,
         "train_loss": 0.5 / epoch, "test_acc": 0.9, "status": "ok"}
        for k, a in enumerate(CONFIG.activations)
    ]  # fmt: skip


def test_fresh_directory_gets_config_headers_and_environment(tmp_path):
    run = tmp_path / "run"
    with open_dir(run) as writer:
        assert writer.checkpoint is None
    document = json.loads((run / store.CONFIG_FILE).read_text())
    assert document["schema"] == store.SCHEMA_VERSION
    assert ExperimentConfig.from_dict(document["config"]) == CONFIG
    assert document["dataset"] == DATASET
    env = document["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == 1 and env["cpu"]
    header = (run / store.METRICS_FILE).read_text()
    assert header == ",".join(store.METRICS_COLUMNS) + "\n"
    assert (run / store.DIAGNOSTICS_FILE).read_text().startswith("depth,member")


def test_rows_and_checkpoint_round_trip_through_the_reader(tmp_path):
    run = tmp_path / "run"
    with open_dir(run) as writer:
        for epoch in (1, 2):
            writer.append_rows(rows(epoch))
            writer.save_checkpoint(
                depth_index=0, depth=None, epoch=epoch, engine={"w": torch.ones(2)}
            )
    data = store.read_run(run)
    assert list(data.metrics["epoch"]) == [1, 1, 2, 2]
    assert list(data.metrics["activation"]) == ["relu", "tanh"] * 2
    assert data.metrics["val_loss"].isna().all()
    with open_dir(run) as writer:
        assert writer.checkpoint.epoch == 2
        assert torch.equal(writer.checkpoint.engine["w"], torch.ones(2))
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_rows_beyond_the_checkpoint_are_dropped_on_reopen(tmp_path):
    run = tmp_path / "run"
    with open_dir(run) as writer:
        writer.append_rows(rows(1))
        writer.save_checkpoint(depth_index=0, depth=None, epoch=1, engine={})
        writer.append_rows(rows(2))  # crash here: rows written, checkpoint not
    with (run / store.METRICS_FILE).open("a") as handle:
        handle.write(",0,relu,0,0.001,3,0.1")  # and a row cut off mid-write
    with open_dir(run) as writer:
        assert writer.checkpoint.epoch == 1
    assert list(store.read_run(run).metrics["epoch"]) == [1, 1]
    assert (run / store.METRICS_FILE).read_text().endswith("\n")


def test_no_checkpoint_means_no_rows_are_kept(tmp_path):
    run = tmp_path / "run"
    with open_dir(run) as writer:
        writer.append_rows(rows(1))
    with open_dir(run) as writer:
        assert writer.checkpoint is None
    assert len(store.read_run(run).metrics) == 0


def test_depth_study_truncates_per_depth(tmp_path):
    config = CONFIG.replace(depths=(2, 4))
    run = tmp_path / "run"
    with open_dir(run, config) as writer:
        for epoch in (1, 2, 3):
            writer.append_rows(rows(epoch, depth=2))
        writer.append_rows(rows(1, depth=4))
        writer.save_checkpoint(depth_index=1, depth=None, epoch=1, engine={})
        writer.append_rows(rows(2, depth=4))
    with open_dir(run, config):
        pass
    metrics = store.read_run(run).metrics
    assert list(zip(metrics["depth"], metrics["epoch"], strict=True)) == [
        (2, 1), (2, 1), (2, 2), (2, 2), (2, 3), (2, 3), (4, 1), (4, 1)
    ]  # fmt: skip


def test_a_second_writer_is_refused_with_one_line(tmp_path):
    run = tmp_path / "run"
    with open_dir(run), pytest.raises(RunDirError) as error:
        open_dir(run)
    message = str(error.value)
    assert "in use by another actlab process" in message and "\n" not in message
    assert f"pid {__import__('os').getpid()}" in message
    with open_dir(run):  # released on close
        pass


def test_a_different_study_is_refused_naming_the_keys(tmp_path):
    run = tmp_path / "run"
    with open_dir(run) as writer:
        writer.append_rows(rows(1))
        writer.save_checkpoint(depth_index=0, depth=None, epoch=1, engine={})
    with pytest.raises(RunDirError, match=r"hidden .*epochs 3 there, 2 asked"):
        open_dir(run, CONFIG.replace(epochs=2, hidden=(64,)))  # more epochs would continue
    with pytest.raises(RunDirError, match="seeds"):
        open_dir(run, CONFIG.replace(seeds=(0, 1)))
    with open_dir(run, CONFIG.replace(threads=1, diagnostics=False)):
        pass  # execution settings may differ


def test_resume_needs_an_existing_run(tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume"):
        open_dir(tmp_path / "missing", resume=True)
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        open_dir(file)


def test_a_run_that_never_completed_an_epoch_is_replaced(tmp_path):
    run = tmp_path / "run"
    with open_dir(run):
        pass  # e.g. the model refused the config before the first epoch
    with open_dir(run, CONFIG.replace(epochs=5, diagnostics=False)) as writer:
        assert writer.checkpoint is None
    assert store.read_run(run).config.epochs == 5
    assert not (run / store.DIAGNOSTICS_FILE).exists()
