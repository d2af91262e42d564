"""MLflow: a parent run per study (its config as params; config.json, report.html and
report.md as artifacts) and a nested child run per member, through `MlflowClient`; an
unreachable tracking server is refused at once, and MLflow's retries are bounded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from actlab.errors import ExportError
from actlab.export.base import ExportTarget, count
from actlab.export.rows import Batch, MemberKey, Study, hparams_of, member_label, member_params
from actlab.study import store

DEFAULT_EXPERIMENT = "actlab"


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


class MlflowTarget(ExportTarget):
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
            f"({count(len(self._children), 'child run')})"
        )

    def write(self, study: Study, batch: Batch) -> None:
        from mlflow.entities import Metric

        self._ensure_parent(study)
        now = int(time.time() * 1000)
        for key, epochs in batch.by_member().items():
            child = self._child(study, key)
            metrics = []
            for item in epochs:
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
