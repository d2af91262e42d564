"""TensorBoard and MLflow exports of a study: live during `compare --log`, or after the fact
from a run directory alone (`actlab export`).

The run directory stays the source of truth. Both exports are fed its rows (metrics.csv and
diagnostics.csv, as dicts keyed by `store`'s column names) and skip what their target already
holds, so exporting a run twice, or a study resumed after a crash, writes each epoch once.

Names, shared by both tools:

- a scalar per numeric metrics.csv column (``train_loss``, ``test_acc``, ``epoch_time_s``,
  ...), ``diverged`` (1 on the epoch a member diverged, else 0; the ``status`` column), and
  a scalar per diagnostics.csv column and layer (``grad_norm/layer1``, ``dead_frac/layer2``,
  ...), at step = epoch; empty cells are not exported;
- TensorBoard: one run per member, ``<study>/<activation>[/depth=<d>]/lr=<lr>/seed=<seed>``
  (``<study>`` is the run directory's name), with an HParams session (activation, lr, seed,
  depth, model, dataset, ...) whose metrics are ``hparams/final_test_acc``, ... : tags that
  differ from the per-epoch scalars, written once the member's last epoch is known;
- MLflow: one parent run per study (its config as params; config.json, report.html and
  report.md as artifacts) in the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default
  "actlab"), and one nested child run per member (params, tags ``activation``, ``lr``,
  ``seed``, ``depth`` for ``mlflow.search_runs``, metrics with ``step=epoch``).

A study is identified by ``actlab.study_id``: a hash of its config.json (creation time and
study, without the epoch count), so moving the run directory does not duplicate its MLflow
runs (TensorBoard runs are named after the directory), while a new study in a reused
directory is a new one.

Live logging (`LiveLog`) runs each export on a background thread: training never waits for
a slow tracking server, and a failing target warns once and is dropped (the run directory is
complete either way; `actlab export` adds the rest later).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import queue
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from actlab.config import ExperimentConfig
from actlab.errors import ActlabError, ExportError
from actlab.study import store

DEFAULT_TENSORBOARD_DIR = "runs/tb"
DEFAULT_EXPERIMENT = "actlab"
HPARAMS_PREFIX = "hparams/"
# The columns that name a row; every other column is a number exported as a scalar (and
# `status` becomes `diverged`).
ROW_NAMES = ("depth", "member", "activation", "seed", "lr", "epoch", "layer", "status")
METRIC_SCALARS = tuple(c for c in store.METRICS_COLUMNS if c not in ROW_NAMES)
DIAGNOSTIC_SCALARS = tuple(c for c in store.DIAGNOSTICS_COLUMNS if c not in ROW_NAMES)
# How long `LiveLog.close` waits for a target that makes no progress (an unreachable server
# retrying) before it gives up on it.
STALL_TIMEOUT_S = 30.0

MemberKey = tuple  # (depth or None, activation, lr, seed)


# === what is exported: pure functions of run-directory rows ================================


@dataclass(frozen=True)
class Study:
    """A run directory as the exports see it."""

    name: str  # the run directory's name: the top of the TensorBoard run names
    study_id: str
    path: Path
    config: ExperimentConfig
    dataset: dict

    @property
    def epochs(self) -> int:
        return self.config.epochs


@dataclass
class MemberEpoch:
    """One member's scalars of one epoch (metrics.csv row + its diagnostics.csv rows)."""

    member: MemberKey
    epoch: int
    status: str
    scalars: dict[str, float]


@dataclass
class Batch:
    """What one export call writes: member epochs, and the members that are finished."""

    epochs: list[MemberEpoch] = field(default_factory=list)
    # A finished member: (its last epoch, its final metrics; see `final_metrics`).
    finals: dict[MemberKey, tuple[int, dict[str, float]]] = field(default_factory=dict)


def study_of(run: store.RunData) -> Study:
    """The Study of a run directory read by `store.read_run`."""
    key = run.config.study_key()
    key.pop("epochs", None)  # a study continued with more epochs is the same study
    identity = {"created": run.created, "study": key, "seeds": list(run.config.seeds)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Study(
        name=run.path.resolve().name,
        study_id=digest[:16],
        path=run.path,
        config=run.config,
        dataset=run.dataset,
    )


def member_key(row: dict) -> MemberKey:
    depth = row.get("depth")
    return (None if _empty(depth) else int(depth), str(row["activation"]), float(row["lr"]),
            int(row["seed"]))  # fmt: skip


def member_label(key: MemberKey) -> str:
    depth, activation, lr, seed = key
    label = f"{activation}|lr={lr:g}|seed={seed}"
    return label if depth is None else f"{label}|depth={depth}"


def tensorboard_run_name(study: Study, key: MemberKey) -> str:
    """``<study>/<activation>[/depth=<d>]/lr=<lr>/seed=<seed>``: TensorBoard's run filter
    (a regex over run names) then groups members by study, activation, lr or seed. A ``/``
    or ``%`` inside a spec (``expr:x/2``) is percent-encoded, so it names no folder."""
    depth, activation, lr, seed = key
    parts = [_path_part(study.name), _path_part(activation)]
    if depth is not None:
        parts.append(f"depth={depth}")
    parts += [f"lr={lr:g}", f"seed={seed}"]
    return "/".join(parts)


def _path_part(text: str) -> str:
    text = text.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    return "%2E" + text[1:] if text.startswith(".") else text


def _empty(value: object) -> bool:
    if value is None or value == "":
        return True
    try:
        return bool(value != value)  # NaN, pandas.NA
    except TypeError:  # pandas.NA in a boolean context
        return True


def member_epochs(
    metrics_rows: Iterable[dict], diagnostics_rows: Iterable[dict]
) -> list[MemberEpoch]:
    """Each metrics row with its diagnostics, as named scalars (empty cells left out)."""
    layers: dict[tuple, list[dict]] = {}
    for row in diagnostics_rows:
        layers.setdefault((member_key(row), int(row["epoch"])), []).append(row)
    result = []
    for row in metrics_rows:
        key, epoch = member_key(row), int(row["epoch"])
        status = str(row["status"])
        scalars = {name: float(row[name]) for name in METRIC_SCALARS if not _empty(row.get(name))}
        scalars["diverged"] = 1.0 if status == "diverged" else 0.0
        for layer_row in layers.get((key, epoch), []):
            layer = int(layer_row["layer"])
            for name in DIAGNOSTIC_SCALARS:
                if not _empty(layer_row.get(name)):
                    scalars[f"{name}/layer{layer}"] = float(layer_row[name])
        result.append(MemberEpoch(key, epoch, status, scalars))
    return result


def final_metrics(history: Sequence[MemberEpoch], with_val: bool, bpc=True) -> dict[str, float]:
    """The numbers an HParams session is linked to: the last ok epoch's test accuracy and
    loss, train loss and val accuracy (with a validation split), the best test accuracy over
    epochs, and whether the member diverged (NaN where no epoch was ok). A study without
    accuracy (a language model; `bpc` False for any other) also gets its test loss in bpc."""
    ok = [e for e in history if e.status == "ok"]
    last = max(ok, key=lambda e: e.epoch).scalars if ok else {}
    names = ["test_acc", "test_loss", "train_loss"] + (["val_acc"] if with_val else [])
    result = {f"final_{name}": last.get(name, math.nan) for name in names}
    accuracies = [e.scalars["test_acc"] for e in ok if "test_acc" in e.scalars]
    result["best_test_acc"] = max(accuracies, default=math.nan)
    if ok and not accuracies and bpc:  # a language model: its loss in bits per character
        result["final_test_bpc"] = result["final_test_loss"] / math.log(2)
    result["diverged"] = 1.0 if any(e.status == "diverged" for e in history) else 0.0
    return result


def hparams_of(study: Study, key: MemberKey) -> dict[str, object]:
    """A member's hyperparameters for the HParams dashboard (depth: hidden layers)."""
    depth, activation, lr, seed = key
    config = study.config
    return {
        "activation": activation,
        "lr": lr,
        "seed": seed,
        "depth": depth if depth is not None else len(config.hidden),
        "model": config.model,
        "dataset": config.dataset,
    }


def varying_hparams(config: ExperimentConfig) -> set[str]:
    """The member dimensions that take several values in a study."""
    sizes = {"activation": len(config.activations), "lr": len(config.lrs),
             "seed": len(config.seeds), "depth": len(config.depth_list)}  # fmt: skip
    return {name for name, size in sizes.items() if size > 1}


def member_params(study: Study, key: MemberKey) -> dict[str, object]:
    """A member's MLflow params: its hyperparameters and the training settings."""
    config = study.config
    return {
        **hparams_of(study, key),
        "hidden": ",".join(str(h) for h in config.hidden_for(key[0])),
        "optimizer": config.optimizer,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
    }


class StudyRows:
    """Turns row batches into export Batches, keeping each member's history (for its final
    metrics: the best epoch needs every epoch, also across a resume)."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.history: dict[MemberKey, dict[int, MemberEpoch]] = {}
        self.with_val, self.lm = bool(study.config.val_size), study.config.task.name == "lm"

    def batch(self, metrics_rows: Iterable[dict], diagnostics_rows: Iterable[dict]) -> Batch:
        epochs = member_epochs(metrics_rows, diagnostics_rows)
        batch = Batch(epochs)
        for item in epochs:
            self.history.setdefault(item.member, {})[item.epoch] = item
        for item in epochs:
            if item.status == "diverged" or item.epoch >= self.study.epochs:
                history = sorted(self.history[item.member].values(), key=lambda e: e.epoch)
                final = final_metrics(history, self.with_val, self.lm)
                batch.finals[item.member] = (history[-1].epoch, final)
        return batch

    def is_complete(self) -> bool:
        """Every member of the study has its last epoch (or diverged)."""
        config = self.study.config
        expected = len(config.depth_list) * len(config.seeds) * len(config.activations)
        expected *= len(config.lrs)
        finished = sum(
            1
            for rows in self.history.values()
            if any(e.status == "diverged" or e.epoch >= self.study.epochs for e in rows.values())
        )
        return finished >= expected


def run_rows(run: store.RunData) -> tuple[list[dict], list[dict]]:
    """metrics.csv and diagnostics.csv rows of a read run as plain dicts."""
    metrics = run.metrics[list(store.METRICS_COLUMNS)].to_dict("records")
    diagnostics = (
        run.diagnostics[list(store.DIAGNOSTICS_COLUMNS)].to_dict("records")
        if run.diagnostics is not None
        else []
    )
    return metrics, diagnostics


# === TensorBoard ==========================================================================


class TensorBoardTarget:
    """Event files under `logdir`, one run (folder) per member.

    Each session appends to one new event file per member, named with the study id
    (``events.out.tfevents.<time>.<host>.<pid>.actlab-<study_id>``); what earlier files of the
    same study hold, read with TensorBoard's own event loader, is never written again. A
    member folder that holds another study's events is refused (the runs would mix)."""

    kind = "tensorboard"

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self.written = 0  # scalars written by this object
        self._members: dict[MemberKey, _EventRun] = {}

    def describe(self) -> str:
        return f"tensorboard {self.logdir}"

    def where(self, study: Study) -> str:
        return f"{self.logdir / _path_part(study.name)} ({_count(len(self._members), 'run')})"

    def write(self, study: Study, batch: Batch) -> None:
        by_member: dict[MemberKey, list[MemberEpoch]] = {}
        for item in batch.epochs:
            by_member.setdefault(item.member, []).append(item)
        for key in list(by_member) + [k for k in batch.finals if k not in by_member]:
            run = self._run(study, key)
            self.written += run.write(study, key, by_member.get(key, []), batch.finals.get(key))

    def finish(self, study: Study, complete: bool) -> None:
        pass

    def _run(self, study: Study, key: MemberKey) -> _EventRun:
        if key not in self._members:
            folder = self.logdir / tensorboard_run_name(study, key)
            self._members[key] = _EventRun(folder, study.study_id)
        return self._members[key]


class _EventRun:
    """One member's TensorBoard run: what it holds already, and the file this session adds."""

    def __init__(self, folder: Path, study_id: str) -> None:
        self.folder = folder
        self.suffix = f".actlab-{study_id}"
        self.file: Path | None = None
        self.existing: set[tuple[str, int]] = set()
        self.started = False  # HParams session start written
        self.ended = False  # final metrics and session end written
        self._read_existing()

    def _read_existing(self) -> None:
        from tensorboard.backend.event_processing.event_file_loader import (
            LegacyEventFileLoader,
        )
        from tensorboard.plugins.hparams import metadata

        for path in sorted(glob.glob(str(self.folder / "*tfevents*"))):
            if not path.endswith(self.suffix):
                raise ExportError(
                    f"{self.folder} already holds another study's events ({Path(path).name}); "
                    "choose another TensorBoard directory or remove that folder"
                )
            for event in LegacyEventFileLoader(path).Load():
                for value in event.summary.value:
                    if value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:
                        self.started |= value.tag == metadata.SESSION_START_INFO_TAG
                        self.ended |= value.tag == metadata.SESSION_END_INFO_TAG
                    else:
                        self.existing.add((value.tag, int(event.step)))

    def write(
        self,
        study: Study,
        key: MemberKey,
        epochs: list[MemberEpoch],
        final: tuple[int, dict[str, float]] | None,
    ) -> int:
        """Append what the run lacks of `epochs` (and of `final`, the member's last epoch
        and final metrics); returns the number of per-epoch scalars written."""
        from tensorboard.compat.proto import event_pb2, summary_pb2

        def scalar_event(tag: str, value: float, step: int) -> event_pb2.Event:
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]
            )
            return event_pb2.Event(wall_time=time.time(), step=step, summary=summary)

        events = [] if self.started else _hparams_start_events(study, key)
        written = 0
        for item in sorted(epochs, key=lambda e: e.epoch):
            for tag, value in item.scalars.items():
                if (tag, item.epoch) not in self.existing:
                    events.append(scalar_event(tag, value, item.epoch))
                    self.existing.add((tag, item.epoch))
                    written += 1
        if final is not None:
            last_epoch, values = final
            for name, value in values.items():
                if (HPARAMS_PREFIX + name, last_epoch) not in self.existing:
                    events.append(scalar_event(HPARAMS_PREFIX + name, value, last_epoch))
                    self.existing.add((HPARAMS_PREFIX + name, last_epoch))
            if not self.ended:
                events.append(_hparams_end_event())
        if not events:
            return 0
        self._append(events)
        self.started = True
        self.ended |= final is not None
        return written

    def _append(self, events: list) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        if self.file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
            self.file = self.folder / (name + self.suffix)
            events = [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"), *events]
        with open(self.file, "ab") as handle:
            writer = RecordWriter(handle)
            for event in events:
                writer.write(event.SerializeToString())
            handle.flush()


def _hparams_start_events(study: Study, key: MemberKey) -> list:
    """The HParams experiment and session-start summaries, written into the member's own run
    (`SummaryWriter.add_hparams` would write them into a new sub-run and copy the metrics
    there as extra scalars). The hyperparameters that vary in the study are marked
    ``differs``, so the dashboard shows them first."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams.metadata import EXPERIMENT_TAG, SESSION_START_INFO_TAG

    hparams = hparams_of(study, key)
    varying = varying_hparams(study.config)
    infos, start = [], plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        if isinstance(value, str):
            start.hparams[name].string_value = value
            kind = api_pb2.DATA_TYPE_STRING
        else:
            start.hparams[name].number_value = float(value)
            kind = api_pb2.DATA_TYPE_FLOAT64
        infos.append(api_pb2.HParamInfo(name=name, type=kind, differs=name in varying))
    metrics = [
        api_pb2.MetricInfo(
            name=api_pb2.MetricName(tag=HPARAMS_PREFIX + name), display_name=name.replace("_", " ")
        )
        for name in final_metrics([], bool(study.config.val_size))
    ]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    return [
        _hparams_event(EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        _hparams_event(
            SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)
        ),
    ]


def _hparams_end_event():
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams.metadata import SESSION_END_INFO_TAG

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return _hparams_event(
        SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)
    )


def _hparams_event(tag: str, data):
    """An event holding one HParams plugin summary (no value: the metadata is the data)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME

    data.version = PLUGIN_DATA_VERSION
    plugin = summary_pb2.SummaryMetadata.PluginData(
        plugin_name=PLUGIN_NAME, content=data.SerializeToString()
    )
    value = summary_pb2.Summary.Value(
        tag=tag, metadata=summary_pb2.SummaryMetadata(plugin_data=plugin)
    )
    return event_pb2.Event(wall_time=time.time(), summary=summary_pb2.Summary(value=[value]))


# === MLflow ===============================================================================


# An MLflow server that stops answering mid-study costs at most this (MLflow's defaults,
# 7 retries with backoff and a 120 s timeout, made an unreachable URI take minutes).
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
CONNECT_TIMEOUT_S = 5.0


def check_server(uri: str) -> None:
    """Refuse at once an http(s) tracking URI that nobody answers on (one line, within
    CONNECT_TIMEOUT_S), and bound MLflow's retries for later requests (HTTP_LIMITS; a
    value already in the environment is kept)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise ExportError(
            f"no MLflow server reachable at {uri} ({reason}, checked for "
            f"{CONNECT_TIMEOUT_S:g} s); start one (`mlflow server`), check the URI, or "
            "give --mlflow without a URI for a local store"
        ) from None


class MlflowTarget:
    """A parent run per study and a nested child run per member, through `MlflowClient`.

    `uri` None means $MLFLOW_TRACKING_URI, else MLflow's own default (since MLflow 3.7
    ``sqlite:///mlflow.db`` in the working directory; never a new ``./mlruns`` file store).
    For a sqlite store a new experiment keeps its artifacts beside the database
    (``mlartifacts/``), not in ``./mlruns`` of whatever directory actlab runs in."""

    kind = "mlflow"

    def __init__(self, uri: str | None = None, experiment: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(uri)
        check_server(self.uri)
        self.experiment_name = experiment or os.environ.get(
            "MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT
        )
        self.client = MlflowClient(tracking_uri=self.uri)
        self.written = 0
        self.parent_id: str | None = None
        self._parent_status = ""
        self._experiment_id: str | None = None
        self._children: dict[str, _ChildRun] = {}  # by member label

    def describe(self) -> str:
        return f"mlflow {self.uri}"

    def where(self, study: Study) -> str:
        return (
            f"{self.uri}, experiment {self.experiment_name!r}, run {self.parent_id} "
            f"({_count(len(self._children), 'child run')})"
        )

    def write(self, study: Study, batch: Batch) -> None:
        from mlflow.entities import Metric

        self._ensure_parent(study)
        by_member: dict[MemberKey, list[MemberEpoch]] = {}
        for item in batch.epochs:
            by_member.setdefault(item.member, []).append(item)
        now = int(time.time() * 1000)
        for key in list(by_member) + [k for k in batch.finals if k not in by_member]:
            child = self._child(study, key)
            metrics = []
            for item in by_member.get(key, []):
                for name, value in item.scalars.items():
                    if item.epoch not in child.steps(self.client, name):
                        metrics.append(Metric(name, value, now, item.epoch))
            for start in range(0, len(metrics), 1000):  # MLflow's batch limit
                self.client.log_batch(child.run_id, metrics=metrics[start : start + 1000])
            for metric in metrics:
                child.steps(self.client, metric.key).add(metric.step)
            self.written += len(metrics)
            final = batch.finals.get(key)
            if final is not None and child.status != "FINISHED":
                status = "diverged" if final[1]["diverged"] else "ok"
                self.client.set_tag(child.run_id, "status", status)
                self.client.set_terminated(child.run_id, "FINISHED")
                child.status = "FINISHED"

    def finish(self, study: Study, complete: bool) -> None:
        """Artifacts (replaced, not added, on a second export) and the parent's status."""
        self._ensure_parent(study)
        for name in (store.CONFIG_FILE, "report.html", "report.md"):
            if (study.path / name).is_file():
                self.client.log_artifact(self.parent_id, str(study.path / name))
        if complete and self._parent_status != "FINISHED":
            self.client.set_terminated(self.parent_id, "FINISHED")
            self._parent_status = "FINISHED"

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = self.client.create_experiment(
                    self.experiment_name, artifact_location=_sqlite_artifact_location(self.uri)
                )
        return self._experiment_id

    def _ensure_parent(self, study: Study) -> None:
        if self.parent_id is not None:
            return
        experiment = self._experiment()
        found = self.client.search_runs(
            [experiment],
            filter_string=f"tags.`actlab.study_id` = '{study.study_id}' "
            "and tags.`actlab.role` = 'study'",
        )
        if found:
            run = found[0]
        else:
            run = self.client.create_run(
                experiment,
                run_name=study.name,
                tags={
                    "actlab.study_id": study.study_id,
                    "actlab.role": "study",
                    "actlab.run_dir": str(study.path.resolve()),
                    "dataset": study.config.dataset,
                    "model": study.config.model,
                },
            )
            self.client.log_batch(run.info.run_id, params=_params(_study_params(study)))
        self.parent_id = run.info.run_id
        self._parent_status = run.info.status
        children = self.client.search_runs(
            [experiment],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
            max_results=50_000,
        )
        for child in children:
            label = child.data.tags.get("actlab.member")
            if label is not None:
                self._children[label] = _ChildRun(child.info.run_id, child.info.status)

    def _child(self, study: Study, key: MemberKey) -> _ChildRun:
        label = member_label(key)
        if label not in self._children:
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

            depth, activation, lr, seed = key
            hparams = hparams_of(study, key)
            run = self.client.create_run(
                self._experiment(),
                run_name=label,
                tags={
                    MLFLOW_PARENT_RUN_ID: self.parent_id,
                    "actlab.study_id": study.study_id,
                    "actlab.role": "member",
                    "actlab.member": label,
                    "activation": activation,
                    "lr": f"{lr:g}",
                    "seed": str(seed),
                    "depth": str(hparams["depth"]),
                },
            )
            self.client.log_batch(run.info.run_id, params=_params(member_params(study, key)))
            self._children[label] = _ChildRun(run.info.run_id, run.info.status, fresh=True)
        return self._children[label]


def tracking_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else MLflow's own default (MLflow >= 3.7:
    ``sqlite:///mlflow.db`` in the working directory, unless ./mlruns already holds runs)."""
    import mlflow

    return uri or mlflow.get_tracking_uri()


@dataclass
class _ChildRun:
    run_id: str
    status: str
    fresh: bool = False  # created by this object: it holds no metrics yet
    _steps: dict[str, set[int]] = field(default_factory=dict)

    def steps(self, client, key: str) -> set[int]:
        """The steps this run already holds for metric `key` (asked once per key)."""
        if key not in self._steps:
            history = [] if self.fresh else client.get_metric_history(self.run_id, key)
            self._steps[key] = {m.step for m in history}
        return self._steps[key]


def _params(values: dict) -> list:
    from mlflow.entities import Param

    return [Param(name, str(value)) for name, value in values.items()]


def _study_params(study: Study) -> dict:
    """The config (tuples as comma lists) and the dataset's sizes, as MLflow params."""
    params = {}
    for name, value in study.config.to_dict().items():
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        params[name] = value
    for name in ("train_size", "val_size", "test_size"):
        if name in study.dataset:
            params[f"dataset.{name}"] = study.dataset[name]
    return params


def _sqlite_artifact_location(uri: str) -> str | None:
    """Artifacts of a new experiment in a sqlite store: ``mlartifacts/`` beside the database
    (MLflow's own default would be ./mlruns of the current directory). None otherwise: a
    tracking server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///") :])
    return (database.resolve().parent / "mlartifacts").as_uri()


# === running the exports ==================================================================


def require(kind: str) -> None:
    """Fail with the pip line that installs a missing export package (cheap: no import)."""
    import importlib.util

    module = {"tensorboard": "tensorboard", "mlflow": "mlflow"}[kind]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules
        found = False
    if not found:
        raise ExportError(
            f"the {kind} export needs the {module} package; "
            f"pip install 'actlab[{kind}]' (or pip install {module})"
        )


def open_target(kind: str, where: str = ""):
    """A TensorBoard log directory ("" for runs/tb) or an MLflow tracking URI ("" for
    $MLFLOW_TRACKING_URI, else MLflow's default)."""
    require(kind)
    if kind == "tensorboard":
        return TensorBoardTarget(where or DEFAULT_TENSORBOARD_DIR)
    return MlflowTarget(where or None)


def export_run(run_dir: str | Path, targets: dict[str, str]) -> list[str]:
    """Export everything in a run directory that the targets ({"tensorboard": DIR,
    "mlflow": URI}) do not hold yet; returns one line per target saying where it went."""
    if not targets:
        raise ExportError("nothing to export to; add --tensorboard DIR and/or --mlflow [URI]")
    for kind in targets:
        require(kind)
    run = store.read_run(run_dir)
    study = study_of(run)
    rows = StudyRows(study)
    batch = rows.batch(*run_rows(run))
    lines = []
    for kind, where in targets.items():
        target = None
        try:
            target = open_target(kind, where)
            target.write(study, batch)
            target.finish(study, rows.is_complete())
        except (ActlabError, OSError):  # OSError: the CLI names the path and the way out
            raise
        except Exception as error:
            name = target.describe() if target is not None else f"{kind} {where}".strip()
            raise ExportError(f"exporting {run_dir} to {name} failed: {_one_line(error)}") from None
        lines.append(f"{kind}: {target.where(study)}, {target.written} values written")
    return lines


def parse_log_specs(specs: Sequence[str]) -> dict[str, str]:
    """``--log`` values: ``tensorboard[=DIR]`` and ``mlflow[=URI]``, repeated or joined by
    commas; returns {"tensorboard": DIR or "", "mlflow": URI or ""}. Checks that the
    packages are installed (before any training)."""
    chosen: dict[str, str] = {}
    for spec in specs:
        for part in spec.split(","):
            if not part.strip():
                continue
            kind, _, where = part.strip().partition("=")
            if kind not in ("tensorboard", "mlflow"):
                raise ExportError(
                    f"--log {part!r}: unknown log target; use tensorboard[=DIR] or mlflow[=URI]"
                )
            require(kind)
            chosen[kind] = where
    if not chosen:
        raise ExportError("--log needs a target: tensorboard[=DIR] or mlflow[=URI]")
    return chosen


class LiveLog:
    """`compare --log`: exports each epoch as it ends, one background thread per target (a
    slow tracking server holds up neither training nor the other target).

    The packages are imported here, before training (MLflow's import takes seconds, and
    on a thread it would compete with training for the GIL and lag the first epochs); each
    thread opens its target (a new MLflow store creates its tables) while the data loads. Its first epoch (or `close`, if no epoch ran) exports all of the
    run directory that the target does not hold yet, so that a resumed study's earlier
    epochs, and an epoch a crash left half-exported, are written exactly once; later epochs
    are exported from the engine's rows. A target that fails warns once through `warn` and
    is dropped."""

    def __init__(
        self,
        specs: dict[str, str],
        run_dir: str | Path,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=2))
        self._lock = threading.Lock()
        for kind in specs:
            _import_modules(kind)
        self.workers = [_LogWorker(kind, where, self) for kind, where in specs.items()]

    def on_epoch(self, result) -> None:
        """An `engine.EpochResult` (the run directory already holds its rows)."""
        for worker in self.workers:
            worker.queue.put(("rows", list(result.metrics), list(result.diagnostics)))

    def flush(self) -> None:
        """Wait until every epoch queued so far is exported (benchmarks, tests)."""
        for worker in self.workers:
            worker.queue.join()

    def close(self, stall_timeout: float = STALL_TIMEOUT_S) -> list[str]:
        """Export what is left (and the report as an MLflow artifact); wait while the exports
        make progress. Returns one line per target saying where the study went."""
        for worker in self.workers:
            worker.queue.put(("finish",))
            worker.queue.put(None)
        for worker in self.workers:
            while worker.thread.is_alive():
                worker.thread.join(timeout=0.1)
                if time.monotonic() - worker.progress > stall_timeout:
                    worker.fail(f"no progress for {stall_timeout:g} s", training=False)
                    break
        return [
            f"{worker.kind}: {worker.target.where(worker.study)}"
            for worker in self.workers
            if worker.failed is None and worker.study is not None
        ]

    @property
    def cpu_seconds(self) -> float:
        """CPU time the export threads have used so far (`time.thread_time`): what they can
        take from training; their wall time is mostly waiting for the disk or the server."""
        return sum(worker.cpu_s for worker in self.workers)

    @property
    def failed(self) -> dict[str, str]:
        """kind -> why, for the targets that were dropped."""
        return {w.kind: w.failed for w in self.workers if w.failed is not None}


def _import_modules(kind: str) -> None:
    """Import what a target will use (a broken install then fails in its worker, once)."""
    import importlib

    modules = {
        "tensorboard": ("tensorboard.compat.proto.event_pb2",
                        "tensorboard.backend.event_processing.event_file_loader",
                        "tensorboard.plugins.hparams.plugin_data_pb2",
                        "tensorboard.summary.writer.record_writer"),
        "mlflow": ("mlflow", "mlflow.tracking", "mlflow.entities",
                   "mlflow.store.tracking.sqlalchemy_store"),
    }  # fmt: skip
    for module in modules[kind]:
        try:
            importlib.import_module(module)
        except ImportError:
            return


class _LogWorker:
    """One `--log` target and the thread that feeds it."""

    def __init__(self, kind: str, where: str, log: LiveLog) -> None:
        self.kind, self.where, self.log = kind, where, log
        self.target = None
        self.study: Study | None = None
        self.rows: StudyRows | None = None
        self.failed: str | None = None
        self.queue: queue.Queue = queue.Queue()
        self.progress = time.monotonic()
        self.cpu_s = 0.0
        self.thread = threading.Thread(target=self._work, name=f"actlab-log-{kind}", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            self.target = open_target(self.kind, self.where)
        except Exception as error:
            self.fail(_one_line(error))
        self.progress = time.monotonic()
        self.cpu_s = time.thread_time()
        while True:
            item = self.queue.get()
            if item is not None and self.failed is None:
                start = time.thread_time()
                try:
                    self._handle(item)
                except Exception as error:
                    self.fail(_one_line(error))
                self.cpu_s += time.thread_time() - start
            self.progress = time.monotonic()
            self.queue.task_done()
            if item is None:
                return

    def _handle(self, item: tuple) -> None:
        if self.rows is None:  # the first call: everything the run directory holds
            run_dir = self.log.run_dir
            if not (run_dir / store.CONFIG_FILE).is_file():
                return
            run = store.read_run(run_dir)
            if run.metrics.empty:
                return
            self.study = study_of(run)
            self.rows = StudyRows(self.study)
            self.target.write(self.study, self.rows.batch(*run_rows(run)))
        elif item[0] == "rows":
            self.target.write(self.study, self.rows.batch(item[1], item[2]))
        if item[0] == "finish" and self.rows is not None:
            self.target.finish(self.study, self.rows.is_complete())

    def fail(self, reason: str, training: bool = True) -> None:
        if self.failed is not None:
            return
        self.failed = reason
        target = f"{self.kind}={self.where}" if self.where else self.kind
        again = f"--{self.kind} {self.where}".rstrip()
        effect = "logging there stopped, training goes on" if training else "stopped waiting"
        with self.log._lock:
            self.log.warn(
                f"--log {target}: {reason}; {effect} (the run directory is complete: "
                f"`actlab export {self.log.run_dir} {again}` adds the rest later)"
            )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
