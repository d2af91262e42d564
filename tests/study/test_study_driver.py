"""The study driver's parts (issue 22): one callback object with no-op hooks, the resume
point shared by the local and the Ray executor, and the typed, versioned checkpoint."""

from pathlib import Path

import pytest
import torch
from fixtures.data import write_npz

from actlab.config import ExperimentConfig
from actlab.errors import RunDirError
from actlab.study import checkpoint as checkpoint_lib
from actlab.study.callbacks import FunctionCallbacks, StudyCallback, callback_of
from actlab.study.checkpoint import CHECKPOINT_VERSION, Checkpoint, StudyIdentity
from actlab.study.driver import load_study_dataset, run_study
from actlab.study.resume import ResumePoint

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(StudyCallback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_start(self, steps_total, steps_done):
        self.calls.append(f"start {steps_total} {steps_done}")

    def on_plan(self, plan):
        self.calls.append("plan")

    def on_epoch(self, result):
        self.calls.append(f"epoch {result.epoch}")


def test_one_callback_object_gets_the_hooks_it_overrides(tmp_path):
    data = write_npz(tmp_path / "d.npz", 64, 16)
    config = ExperimentConfig(dataset=data, activations=("relu",), epochs=2, hidden=(4,),
                              batch_size=32, threads=1)  # fmt: skip
    recorder = Recorder()  # on_step, on_threads, on_note: the base class's no-ops
    run_study(config, out=tmp_path / "run", dataset=load_study_dataset(config), callback=recorder)
    assert recorder.calls == ["start 4 0", "plan", "epoch 1", "epoch 2"]
    with pytest.raises(TypeError, match="not both"):
        callback_of(recorder, on_epoch=print)
    with pytest.raises(TypeError, match="unknown study hooks"):
        FunctionCallbacks(on_epcoh=print)


def checkpoint(depth_index: int, epoch: int) -> Checkpoint:
    return Checkpoint(depth_index, None, epoch, {}, None)


def test_the_resume_point_says_what_is_left_for_every_executor():
    config = ExperimentConfig(depths=(2, 4, 8), epochs=3)
    fresh = ResumePoint(config, None)
    assert [d for _, d, _ in fresh.depths_left()] == [2, 4, 8]
    assert fresh.steps(10) == (90, 0) and fresh.resume_line() is None
    middle = ResumePoint(config, checkpoint(1, 2))
    left = list(middle.depths_left())
    assert [(i, d) for i, d, _ in left] == [(1, 4), (2, 8)]
    assert left[0][2] is middle.checkpoint and left[1][2] is None
    assert middle.steps(10) == (90, 50)
    assert middle.resume_line() == "resuming after epoch 2/3 of depth 4"
    end_of_depth = ResumePoint(config, checkpoint(1, 3))
    assert [d for _, d, _ in end_of_depth.depths_left()] == [8]
    done = ResumePoint(config, checkpoint(2, 3))
    assert done.finished and list(done.depths_left()) == [] and done.resume_line() is None


def test_the_checkpoint_is_typed_versioned_and_reads_version_1(tmp_path):
    config = ExperimentConfig(seeds=(0, 1))
    identity = StudyIdentity.of(config, {"fingerprint": "sha256:abc"})
    written = Checkpoint(0, None, 2, {"w": torch.ones(1)}, identity, {"metrics.csv": [["a"]]})
    document = written.to_document()
    assert document["schema"] == CHECKPOINT_VERSION == 2
    again = Checkpoint.from_document(document, Path("checkpoint.pt"))
    assert again.identity == identity and again.rows == {"metrics.csv": [["a"]]}
    old = {"schema": 1, "depth_index": 0, "depth": None, "epoch": 2, "engine": {}}
    read = Checkpoint.from_document(old, Path("checkpoint.pt"))
    assert read.version == 1 and read.identity is None and read.rows is None
    read.check_belongs_to(config, {}, Path("checkpoint.pt"))  # nothing to compare: accepted
    other = StudyIdentity.of(config.replace(seeds=(0, 1, 2)), {"fingerprint": "sha256:abc"})
    assert other.differences(identity) == ["seeds 0, 1, 2 there, 0, 1 here"]
    with pytest.raises(RunDirError, match="malformed engine state"):
        Checkpoint.from_document({**old, "engine": {"shards": {"seeds": [[0]]}}}, Path("c"))


def test_an_upgrade_that_adds_options_keeps_a_checkpoint_in_its_study():
    """A checkpoint written before --loss/--metric existed holds only the hash of a key
    without them: `actlab report` and a resume of that run refused it as 'another study
    (study options)' after the upgrade. At their defaults it is the same study; a real
    difference (another lr) is still refused, and one named when the key is stored."""
    config = ExperimentConfig(dataset="diabetes", seeds=(0, 1))  # mse by default; l1 allowed
    data, path = {"fingerprint": "sha256:abc"}, Path("checkpoint.pt")
    key = checkpoint_lib.identity_key(config)
    before = {k: v for k, v in key.items() if k not in checkpoint_lib.ADDED_KEYS}
    legacy = StudyIdentity(checkpoint_lib._sha256(before), (0, 1), "sha256:abc", None)
    Checkpoint(0, None, 1, {}, legacy).check_belongs_to(config, data, path)
    with pytest.raises(RunDirError, match="study options"):
        Checkpoint(0, None, 1, {}, legacy).check_belongs_to(config.replace(lrs=(0.01,)), data, path)
    with pytest.raises(RunDirError, match="study options"):  # not at its default: another study
        Checkpoint(0, None, 1, {}, legacy).check_belongs_to(config.replace(loss="l1"), data, path)
    # a stored key that lacks an option added later compares it at today's default
    stored = StudyIdentity.of(config, data)
    older = StudyIdentity(stored.config_sha256 + "x", (0, 1), "sha256:abc", None,
                          {k: v for k, v in stored.key.items() if k != "metric"})  # fmt: skip
    Checkpoint(0, None, 1, {}, older).check_belongs_to(config, data, path)
    with pytest.raises(RunDirError, match=r"study options: lrs \[0\.001\] there, \[0\.01\] here"):
        Checkpoint(0, None, 1, {}, stored).check_belongs_to(config.replace(lrs=(0.01,)), data, path)
