"""TensorBoard: event files under a log directory, one run (folder) per member named
``<study>/<activation>[/depth=<d>]/lr=<lr>/seed=<seed>``, with an HParams session per
member written into the member's own run. Written with TensorBoard's own protos and record
writer (no torch.utils.tensorboard, no TensorFlow).
"""

from __future__ import annotations

import glob
import os
import socket
import time
from pathlib import Path

from actlab.errors import ExportError
from actlab.export.base import ExportTarget, count
from actlab.export.rows import (
    Batch,
    MemberEpoch,
    MemberKey,
    Study,
    final_metrics,
    hparams_of,
    varying_hparams,
)

DEFAULT_TENSORBOARD_DIR = "runs/tb"


HPARAMS_PREFIX = "hparams/"


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


class TensorBoardTarget(ExportTarget):
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
        return f"{self.logdir / _path_part(study.name)} ({count(len(self._members), 'run')})"

    def write(self, study: Study, batch: Batch) -> None:
        for key, epochs in batch.by_member().items():
            run = self._run(study, key)
            self.written += run.write(study, key, epochs, batch.finals.get(key))

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
