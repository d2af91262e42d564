"""Live logging during a study (`compare --log`): `LiveLog` feeds each export target from a
background thread of its own, so training never waits for a slow tracking server, and a
target that fails warns once and is dropped (the run directory is complete either way).
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from actlab.export.base import one_line
from actlab.export.rows import Study, StudyRows, run_rows, study_of
from actlab.export.targets import open_target
from actlab.study import store

# How long `LiveLog.close` waits for a target that makes no progress (an unreachable server
# retrying) before it gives up on it.
STALL_TIMEOUT_S = 30.0


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
            self.fail(one_line(error))
        self.progress = time.monotonic()
        self.cpu_s = time.thread_time()
        while True:
            item = self.queue.get()
            if item is not None and self.failed is None:
                start = time.thread_time()
                try:
                    self._handle(item)
                except Exception as error:
                    self.fail(one_line(error))
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
