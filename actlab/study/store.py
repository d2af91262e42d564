"""The only reader and writer of run directories (see docs/run-directory.md, schema 1).

Two sections, kept apart on purpose: writing (used by the engine's caller while a study
runs: lock, config, append-only CSVs, atomic checkpoints) and reading (used by the report:
a run directory alone is enough to rebuild everything).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import pandas as pd

from actlab.config import ExperimentConfig, members_for
from actlab.errors import RunDirError
from actlab.study.checkpoint import Checkpoint, StudyIdentity, load_checkpoint
from actlab.study.config_file import (
    DATA_KEYS as DATA_KEYS,  # re-exported, as describe_environment
)
from actlab.study.config_file import (
    SCHEMA_VERSION,
    check_same_study,
    config_from_document,
    extend_epochs,
    read_config_document,
)
from actlab.study.config_file import (
    describe_environment as describe_environment,
)
from actlab.study.files import append_records, replace_atomic, write_text_atomic
from actlab.study.reconcile import check_rows, parse_csv_text, plan_rows

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
DIAGNOSTICS_FILE = "diagnostics.csv"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = "run.lock"

METRICS_COLUMNS = (
    "depth", "member", "activation", "seed", "lr", "epoch",
    "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "epoch_time_s", "status",
)  # fmt: skip
# A study compared on a user model's own metric function (--metric model) has two more
# columns: that metric on the whole validation and test splits (actlab.engine.own_metric).
OWN_METRIC_COLUMNS = ("val_metric", "test_metric")
DIAGNOSTICS_COLUMNS = (
    "depth", "member", "activation", "seed", "lr", "epoch", "layer",
    "grad_norm", "probe_grad_norm", "dead_frac", "saturated_frac", "preact_mean", "preact_std",
)  # fmt: skip


# === writing ==============================================================================
#
# One process writes a run directory at a time (an fcntl lock on run.lock). Rows are
# appended and fsynced as each epoch ends, then the checkpoint (which carries a copy of
# every row) is replaced atomically, so after a crash the checkpoint is at most one epoch
# behind the CSVs: reopening the directory drops the rows beyond the checkpoint and restores
# rows the CSVs lost, and nothing is lost or duplicated.


class RunWriter:
    """The writing side of one run directory, holding its lock until `close()`.

    Open it with `open_run_dir`. `checkpoint` is the last complete checkpoint found when
    the directory was opened (None for a fresh run); every checkpoint it writes carries
    `identity`, the study it belongs to.
    """

    def __init__(
        self,
        path: Path,
        lock_file: IO[str],
        checkpoint: Checkpoint | None,
        records: dict[str, list[list[str]]] | None = None,
        notes: Sequence[str] = (),
        identity: StudyIdentity | None = None,
    ) -> None:
        self.path = path
        self._lock_file = lock_file
        self.checkpoint = checkpoint
        self.identity = identity
        # Every row written so far, as CSV records; each checkpoint carries a copy, so rows
        # that metrics.csv loses (truncated, emptied, deleted) are restored on reopen.
        self.records = records or {METRICS_FILE: [], DIAGNOSTICS_FILE: []}
        self.columns = dict(_COLUMNS)  # the CSVs' columns (open_run_dir: the study's own)
        # What reopening the directory repaired (restored or dropped rows), for the caller.
        self.notes = list(notes)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock and remove run.lock (a killed process leaves it behind: the
        kernel releases its flock, and the next writer takes it over)."""
        if not self._lock_file.closed:
            with contextlib.suppress(OSError):
                (self.path / LOCK_FILE).unlink()
            self._lock_file.close()  # closing the descriptor releases the flock

    def append_rows(
        self, metrics_rows: Sequence[dict], diagnostics_rows: Sequence[dict] = ()
    ) -> None:
        """Append one epoch's rows (dicts keyed by the column names; None = empty), fsynced."""
        for name, columns, rows in (
            (METRICS_FILE, self.columns[METRICS_FILE], metrics_rows),
            (DIAGNOSTICS_FILE, self.columns[DIAGNOSTICS_FILE], diagnostics_rows),
        ):
            if rows:
                records = [_record(row, columns) for row in rows]
                append_records(self.path / name, records)
                self.records[name].extend(records)

    def save_checkpoint(
        self, *, depth_index: int, depth: int | None, epoch: int, engine: dict
    ) -> Checkpoint:
        """Write checkpoint.pt atomically (temp file, fsync, rename, fsync the directory)
        after the last complete `epoch` of the depth at `depth_index`: the engine state,
        the study's identity and a copy of every CSV row appended so far. The one place a
        checkpoint is built."""
        import torch

        checkpoint = Checkpoint(
            depth_index=depth_index,
            depth=depth,
            epoch=epoch,
            engine=engine,
            identity=self.identity,
            rows=self.records,
        )
        document = checkpoint.to_document()
        replace_atomic(self.path / CHECKPOINT_FILE, lambda handle: torch.save(document, handle))
        return checkpoint


def open_run_dir(
    path: str | Path,
    config: ExperimentConfig,
    *,
    members: Sequence[dict],
    dataset: dict,
    environment: dict,
    resume: bool = False,
) -> RunWriter:
    """Create or reopen a run directory for writing and lock it.

    A fresh directory (or one whose run never completed an epoch) gets config.json and the
    CSV headers. One with results must hold the same study (`study_key` and seeds) on the
    same data (sizes and content fingerprint), and its checkpoint must carry the identity
    of that study, else RunDirError names what differs. Its CSV rows are reconciled with
    the copy the checkpoint holds (actlab.study.reconcile): every file is checked before
    any is written. Reopening a study that is not finished removes its reports (they would
    describe a state the directory no longer holds); `RunWriter.notes` says what was done.
    `resume=True` insists that there is a run to continue.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    lock_file = _lock(path)
    identity = StudyIdentity.of(config, dataset)
    try:
        config_path = path / CONFIG_FILE
        if config_path.is_file() and (resume or _has_progress(path)):
            existing = check_same_study(config_path, config, dataset)
            checkpoint = load_checkpoint(path / CHECKPOINT_FILE)
            if checkpoint is not None:
                checkpoint.check_belongs_to(config, dataset, path / CHECKPOINT_FILE)
            plan = plan_rows(path, config, checkpoint, _csv_texts(path), columns_of(config))
            # Everything is checked: now the repairs.
            for name, text in plan.rewrites.items():
                _write_atomic(path / name, text)
            if config.epochs > existing.epochs:  # training longer: continue from the checkpoint
                extend_epochs(config_path, existing.epochs, config.epochs)
            if config.diagnostics and not (path / DIAGNOSTICS_FILE).exists():
                _write_atomic(path / DIAGNOSTICS_FILE, ",".join(DIAGNOSTICS_COLUMNS) + "\n")
            notes = plan.notes
            if checkpoint is None or not checkpoint.finished(config):
                notes += _invalidate_reports(path)
            writer = RunWriter(path, lock_file, checkpoint, plan.records, notes, identity)
            writer.columns = columns_of(config)
        else:
            # A new run; a directory whose run never completed an epoch is simply replaced.
            if resume:
                raise RunDirError(
                    f"nothing to resume in {path} (no {CONFIG_FILE}); drop --resume to start a new run"
                )
            if not config_path.is_file() and (
                (path / METRICS_FILE).exists() or (path / CHECKPOINT_FILE).exists()
            ):
                raise RunDirError(
                    f"{path} holds run files but no {CONFIG_FILE}; remove them or choose another --out"
                )
            notes = _invalidate_reports(path)
            document = {
                "schema": SCHEMA_VERSION,
                "config": config.to_dict(),
                "members": list(members),
                "dataset": dataset,
                "environment": environment,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            _write_atomic(config_path, json.dumps(document, indent=2) + "\n")
            _write_atomic(path / METRICS_FILE, ",".join(metrics_columns(config)) + "\n")
            if config.diagnostics:
                _write_atomic(path / DIAGNOSTICS_FILE, ",".join(DIAGNOSTICS_COLUMNS) + "\n")
            elif (path / DIAGNOSTICS_FILE).exists():
                (path / DIAGNOSTICS_FILE).unlink()
            writer = RunWriter(path, lock_file, None, notes=notes, identity=identity)
            writer.columns = columns_of(config)
    except BaseException:
        lock_file.close()
        raise
    return writer


_COLUMNS = {METRICS_FILE: METRICS_COLUMNS, DIAGNOSTICS_FILE: DIAGNOSTICS_COLUMNS}


def metrics_columns(config: ExperimentConfig) -> tuple[str, ...]:
    """metrics.csv's columns for a study: METRICS_COLUMNS, and OWN_METRIC_COLUMNS after
    test_acc when it is compared on the model's own metric function."""
    if not config.task.has_own_metric:
        return METRICS_COLUMNS
    at = METRICS_COLUMNS.index("test_acc") + 1
    return (*METRICS_COLUMNS[:at], *OWN_METRIC_COLUMNS, *METRICS_COLUMNS[at:])


def columns_of(config: ExperimentConfig) -> dict[str, tuple[str, ...]]:
    """Each CSV's columns for a study."""
    return {METRICS_FILE: metrics_columns(config), DIAGNOSTICS_FILE: DIAGNOSTICS_COLUMNS}


def _csv_texts(path: Path) -> dict[str, str | None]:
    """The text of each CSV of a run directory (None when absent)."""
    texts: dict[str, str | None] = {}
    for name in _COLUMNS:
        try:
            texts[name] = (path / name).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            texts[name] = None
    return texts


# The reports a run directory may hold: its own (report.html/.md) and the one `actlab
# report` writes while the study is being trained (see `run_owner`).
REPORT_FILES = ("report.html", "report.md", "report.unfinished.html", "report.unfinished.md")
REPORT_MARKS = ("<!-- written by actlab report -->", "# actlab: ", "<title>actlab: ")


def _invalidate_reports(path: Path) -> list[str]:
    """Remove the reports actlab wrote in `path`: the study is about to change (resumed,
    extended or restarted), and a report must never outlive the rows it describes. A
    report is rebuilt from the directory alone (`actlab report`)."""
    removed = []
    for name in REPORT_FILES:
        file = path / name
        try:
            with open(file, encoding="utf-8", errors="replace") as handle:
                head = handle.read(4096)
        except (FileNotFoundError, IsADirectoryError):
            continue
        if any(mark in head for mark in REPORT_MARKS):
            file.unlink()
            removed.append(name)
    if not removed:
        return []
    return [
        f"removed {', '.join(removed)} (they described the study before it was reopened); "
        f"the study writes its report when it ends, or run `actlab report {path}`"
    ]


def run_owner(path: Path) -> str | None:
    """The pid (as text, "?" when unknown) of the process writing run directory `path`,
    or None when nobody holds its lock. Never creates or changes a file."""
    try:
        handle = open(path / LOCK_FILE, encoding="utf-8")  # noqa: SIM115
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "?"
        except OSError:
            return None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None


def _has_progress(path: Path) -> bool:
    """Whether a run directory holds any result: a checkpoint or a metrics row."""
    if (path / CHECKPOINT_FILE).exists():
        return True
    try:
        text = (path / METRICS_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    return len(parse_csv_text(text).records) > 1


def _lock(path: Path) -> IO[str]:
    """Take run.lock (an fcntl lock, released by the kernel when the process dies, so a
    lock left by a killed run is simply taken over). The writer removes the file when it
    closes; a lock taken on a file that was removed meanwhile is taken again on the new one."""
    lock_path = path / LOCK_FILE
    for _ in range(100):
        if lock_path.exists() and not lock_path.is_file():
            raise RunDirError(
                f"{lock_path} is not a file; remove it (actlab creates it) or choose another --out"
            )
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 -- held until close()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            raise RunDirError(
                f"run directory {path} is in use by another actlab process (pid {pid}); "
                "wait for it to finish or choose another --out"
            ) from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # the previous owner removed the file between our open and lock
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


_write_atomic = write_text_atomic
_replace_atomic = replace_atomic  # the names tests and older callers use


def _record(row: dict, columns: tuple[str, ...]) -> list[str]:
    """A row as the strings csv.writer writes (str of a float is its shortest repr)."""
    return ["" if row.get(name) is None else str(row[name]) for name in columns]


# === reading ==============================================================================


@dataclass
class RunData:
    """Everything a report needs, read back from one run directory (or several, merged)."""

    paths: list[Path]
    config: ExperimentConfig
    members: list[dict]
    dataset: dict
    environment: dict
    created: str
    metrics: pd.DataFrame  # metrics_columns(config) (+ "run": index into `paths`)
    diagnostics: pd.DataFrame | None  # DIAGNOSTICS_COLUMNS (+ "run"), None when absent
    problems: list[str] = field(default_factory=list)
    environments: list[dict] = field(default_factory=list)  # one per path
    # The pid of the process that was writing the (first) directory when it was read
    # (a study still training), else None: see `run_owner`.
    writing: str | None = None

    @property
    def path(self) -> Path:
        return self.paths[0]


def read_run(path: str | Path, *, verify: bool = True) -> RunData:
    """Read one run directory; never changes it. Damage that leaves usable data (a CSV cut
    off mid-row) is repaired in memory and described in `problems`; anything else raises
    RunDirError with one line. `verify` also applies compare's checks (the checkpoint is
    this study's, and the CSVs hold its copy of the rows unchanged; actlab.study.reconcile):
    a run that fails them is refused, never reported as if it were whole."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not path.is_dir():
        raise RunDirError(
            f"{path} is not a directory; give a run directory written by `actlab compare --out DIR`"
        )
    if not config_path.is_file():
        raise RunDirError(
            f"{path} is not an actlab run directory (no {CONFIG_FILE}); run `actlab compare --out {path}` first"
        )
    writing = run_owner(path)  # before anything is read: the rows may be a moving target
    document = read_config_document(config_path)
    config = config_from_document(document, config_path)
    dataset = dict(document.get("dataset") or {})

    problems: list[str] = []
    # The checks `actlab compare` makes on reopening, read-only: the checkpoint (read
    # before the CSVs, which a study still training only ever extends) must be this
    # study's, and the CSVs must hold every row of its copy, unchanged.
    checkpoint = None
    if verify:
        checkpoint = load_checkpoint(path / CHECKPOINT_FILE, mmap=True)
        if checkpoint is not None:
            checkpoint.check_belongs_to(config, dataset, path / CHECKPOINT_FILE)
    columns = metrics_columns(config)
    metrics = _read_csv(path / METRICS_FILE, columns, problems)
    if metrics is None:
        problems.append(f"{METRICS_FILE}: missing; no epoch was completed")
        metrics = _typed(pd.DataFrame(columns=list(columns)), columns)
    diagnostics = _read_csv(path / DIAGNOSTICS_FILE, DIAGNOSTICS_COLUMNS, problems)
    if verify and checkpoint is not None:
        check_rows(path, config, checkpoint, _csv_texts(path), columns_of(config))
    _check_unique(path / METRICS_FILE, metrics)
    members = document.get("members")
    if not members:
        members = [dataclasses.asdict(m) for d in config.depth_list for m in members_for(config, d)]
        problems.append(
            f"{CONFIG_FILE}: no members block; the members were derived from its config"
        )
    metrics["run"] = 0
    if diagnostics is not None:
        diagnostics["run"] = 0
    environment = document.get("environment") or {}
    return RunData(
        paths=[path],
        config=config,
        members=list(members),
        dataset=dataset,
        environment=environment,
        created=str(document.get("created", "")),
        metrics=metrics,
        diagnostics=diagnostics,
        problems=problems,
        environments=[environment],
        writing=writing,
    )


def _check_unique(path: Path, metrics: pd.DataFrame) -> None:
    """Refuse a metrics.csv holding a member's epoch twice (compare refuses it too)."""
    key = ["depth", "member", "epoch"]
    repeated = metrics[metrics.duplicated(key, keep="first")]
    if len(repeated):
        depth, member, epoch = repeated[key].iloc[0]
        where = "" if pd.isna(depth) else f" of depth {depth}"
        raise RunDirError(
            f"{path} holds epoch {epoch} of member {member}{where} twice; restore the file, "
            f"or delete it to have it rewritten from {CHECKPOINT_FILE} by rerunning the study"
        )


def _read_csv(path: Path, columns: tuple[str, ...], problems: list[str]) -> pd.DataFrame | None:
    """Read an append-only CSV with a CSV reader. The writer ends every row with a newline
    and fsyncs, so a last row without one was cut off (a killed process, a full disk): it is
    dropped. Rows with the wrong number of fields or values that are not numbers where
    numbers belong are skipped; every repair is described in `problems`."""
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise RunDirError(
            f"{path} is unreadable ({reason or error}); rerun the study or restore the file"
        ) from None
    parsed = parse_csv_text(text)
    if not parsed.records:
        problems.append(f"{path.name}: empty file (no header); no rows read")
        return _typed(pd.DataFrame(columns=list(columns)), columns)
    header = parsed.records[0]
    if tuple(header) != columns:
        raise RunDirError(
            f"{path} has columns {header[:20]}, expected {list(columns)}; it was not written by "
            "this actlab version (or was damaged): restore it or rerun the study"
        )
    if not parsed.complete:
        problems.append(
            f"{path.name}: last row cut off mid-row (line {parsed.cut_line}), "
            f"kept {len(parsed.records) - 1} complete rows"
        )
    kept = []
    for record, line in zip(parsed.records[1:], parsed.lines[1:], strict=True):
        if len(record) != len(columns):
            what = "is blank" if not record else "has the wrong number of fields"
            problems.append(f"{path.name}: line {line} {what}; skipped it")
        elif not _valid_record(record, columns):
            problems.append(
                f"{path.name}: line {line} holds a value that is not valid there; skipped it"
            )
        else:
            kept.append(record)
    frame = (
        pd.DataFrame(kept, columns=list(columns)) if kept else pd.DataFrame(columns=list(columns))
    )
    return _typed(frame, columns)


_INTEGER_COLUMNS = ("member", "seed", "epoch", "layer")
_TEXT_COLUMNS = ("activation", "status")


def _valid_record(record: list[str], columns: tuple[str, ...]) -> bool:
    for name, value in zip(columns, record, strict=True):
        if name in _TEXT_COLUMNS:
            continue
        if name in _INTEGER_COLUMNS or name == "depth":
            if not (value.strip().lstrip("-").isdigit() or (name == "depth" and value == "")):
                return False
        elif value != "":
            try:
                float(value)
            except ValueError:
                return False
    return True


def _typed(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = frame.copy()
    for name in columns:
        if name in ("activation", "status"):
            frame[name] = frame[name].astype("string").fillna("").astype(object)
        elif name in ("depth",):
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("Int64")
        elif name in _INTEGER_COLUMNS:
            frame[name] = pd.to_numeric(frame[name]).astype("int64")
        else:  # rows were validated: "" (an empty metric) is the only value coerced to NaN
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return frame


# Members are identified across runs by what they are, not by their index in a stacked model.
MEMBER_KEY = ("depth", "activation", "lr", "seed")


def merge_runs(paths: Sequence[str | Path]) -> RunData:
    """Read several run directories of the same study (same `study_key`) as one: their seeds
    are pooled. A member present in several runs is kept from the run with the most epochs
    (the first on a tie), with a note in `problems`."""
    if not paths:
        raise RunDirError("no run directory given; e.g. actlab report runs/compare")
    runs = [read_run(p) for p in paths]
    first = runs[0]
    key = first.config.study_key()
    for run in runs[1:]:
        other = run.config.study_key()
        differing = [name for name in key if key[name] != other.get(name)]
        if differing:
            name = differing[0]
            raise RunDirError(
                f"cannot merge {first.path} and {run.path}: config differs in {name!r} "
                f"({key[name]!r} vs {other.get(name)!r})"
                + (f" and in {', '.join(differing[1:])}" if len(differing) > 1 else "")
                + "; merge only runs of the same study"
            )
    if len(runs) == 1:
        return first

    problems = [f"{run.path.name}/{p}" for run in runs for p in run.problems]
    counts = [_rows_per_member(run.metrics) for run in runs]
    chosen: dict[tuple, int] = {}  # member key -> index of the run whose rows are kept
    for index, count in enumerate(counts):
        for member_key, rows in count.items():
            if member_key not in chosen:
                chosen[member_key] = index
                continue
            previous = chosen[member_key]
            if rows > counts[previous][member_key]:
                chosen[member_key] = index
            problems.append(
                f"member {_key_text(member_key)} is in both {runs[previous].path} and "
                f"{runs[index].path}; kept the rows of {runs[chosen[member_key]].path}"
            )
    metrics_parts, diagnostics_parts, members = [], [], []
    for index, run in enumerate(runs):
        metrics_parts.append(_rows_kept(run.metrics, chosen, index))
        if run.diagnostics is not None:
            diagnostics_parts.append(_rows_kept(run.diagnostics, chosen, index))
        members.extend(dict(m, run=index) for m in run.members)
    seeds = tuple(sorted({s for run in runs for s in run.config.seeds}))
    return RunData(
        paths=[run.path for run in runs],
        config=first.config.replace(seeds=seeds),
        members=members,
        dataset=first.dataset,
        environment=first.environment,
        created=first.created,
        metrics=pd.concat(metrics_parts, ignore_index=True),
        diagnostics=pd.concat(diagnostics_parts, ignore_index=True) if diagnostics_parts else None,
        problems=problems,
        environments=[run.environment for run in runs],
        writing=next((run.writing for run in runs if run.writing is not None), None),
    )


def _normal_key(key: tuple) -> tuple:
    depth, activation, lr, seed = key
    return (None if pd.isna(depth) else int(depth), str(activation), float(lr), int(seed))


def _member_keys(frame: pd.DataFrame) -> list[tuple]:
    return [_normal_key(k) for k in frame[list(MEMBER_KEY)].itertuples(index=False)]


def _rows_per_member(frame: pd.DataFrame) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for key in _member_keys(frame):
        counts[key] = counts.get(key, 0) + 1
    return counts


def _rows_kept(frame: pd.DataFrame, chosen: dict[tuple, int], index: int) -> pd.DataFrame:
    part = frame[[chosen[key] == index for key in _member_keys(frame)]].copy()
    part["run"] = index
    return part


def _key_text(key: tuple) -> str:
    depth, activation, lr, seed = key
    text = f"{activation}|lr={lr:g}|seed={seed}"
    return text if depth is None else f"{text}|depth={depth}"
