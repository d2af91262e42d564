"""The only reader and writer of run directories (see docs/run-directory.md, schema 1).

Two sections, kept apart on purpose: writing (used by the engine's caller while a study
runs: lock, config, append-only CSVs, atomic checkpoints) and reading (used by the report:
a run directory alone is enough to rebuild everything).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import platform
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import pandas as pd

from actlab.config import ExperimentConfig
from actlab.errors import ConfigError, RunDirError

SCHEMA_VERSION = 1
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


def describe_environment(device: str, threads: int) -> dict:
    """Versions and hardware recorded in config.json (no hidden state: docs/design.md, rule 5)."""
    import numpy
    import torch

    import actlab

    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "actlab": actlab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu": _cpu_model_name(),
        "gpu": gpu,
        "threads": int(threads),
        "hostname": socket.gethostname(),
    }


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class RunWriter:
    """The writing side of one run directory, holding its lock until `close()`.

    Open it with `open_run_dir`. `checkpoint` is the last complete checkpoint found when
    the directory was opened (None for a fresh run).
    """

    def __init__(
        self,
        path: Path,
        lock_file: IO[str],
        checkpoint: dict | None,
        records: dict[str, list[list[str]]] | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self.path = path
        self._lock_file = lock_file
        self.checkpoint = checkpoint
        # Every row written so far, as CSV records; each checkpoint carries a copy, so rows
        # that metrics.csv loses (truncated, emptied, deleted) are restored on reopen.
        self.records = records or {METRICS_FILE: [], DIAGNOSTICS_FILE: []}
        # What reopening the directory repaired (restored or dropped rows), for the caller.
        self.notes = list(notes)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._lock_file.closed:
            self._lock_file.close()  # closing the descriptor releases the flock

    def append_rows(
        self, metrics_rows: Sequence[dict], diagnostics_rows: Sequence[dict] = ()
    ) -> None:
        """Append one epoch's rows (dicts keyed by the column names; None = empty), fsynced."""
        for name, columns, rows in (
            (METRICS_FILE, METRICS_COLUMNS, metrics_rows),
            (DIAGNOSTICS_FILE, DIAGNOSTICS_COLUMNS, diagnostics_rows),
        ):
            if rows:
                records = [_record(row, columns) for row in rows]
                _append_records(self.path / name, records)
                self.records[name].extend(records)

    def save_checkpoint(self, state: dict) -> None:
        """Write checkpoint.pt atomically: temp file, fsync, rename, fsync the directory.

        `state` must hold "depth_index" and "epoch" (the last complete epoch of that depth).
        The checkpoint also holds a copy of every CSV row appended so far ("rows")."""
        import torch

        document = {"schema": SCHEMA_VERSION, **state, "rows": self.records}
        _replace_atomic(self.path / CHECKPOINT_FILE, lambda handle: torch.save(document, handle))


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
    same data (sizes and content fingerprint), else RunDirError names what differs. Its CSV
    rows are reconciled with the copy the checkpoint holds: rows beyond the checkpoint (a
    crash between the append and the checkpoint) are dropped, rows the CSV lost are restored,
    and a CSV that contradicts the checkpoint is refused; `RunWriter.notes` says what was
    done. `resume=True` insists that there is a run to continue.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    lock_file = _lock(path)
    try:
        config_path = path / CONFIG_FILE
        if config_path.is_file() and (resume or _has_progress(path)):
            existing = _check_same_study(config_path, config, dataset)
            checkpoint = _load_checkpoint(path)
            records, notes = _reconcile_with_checkpoint(path, config, checkpoint)
            if config.epochs > existing.epochs:  # training longer: continue from the checkpoint
                _extend_epochs(config_path, existing.epochs, config.epochs)
            if config.diagnostics and not (path / DIAGNOSTICS_FILE).exists():
                _write_atomic(path / DIAGNOSTICS_FILE, ",".join(DIAGNOSTICS_COLUMNS) + "\n")
            writer = RunWriter(path, lock_file, checkpoint, records, notes)
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
            checkpoint = None
            document = {
                "schema": SCHEMA_VERSION,
                "config": config.to_dict(),
                "members": list(members),
                "dataset": dataset,
                "environment": environment,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            _write_atomic(config_path, json.dumps(document, indent=2) + "\n")
            _write_atomic(path / METRICS_FILE, ",".join(METRICS_COLUMNS) + "\n")
            if config.diagnostics:
                _write_atomic(path / DIAGNOSTICS_FILE, ",".join(DIAGNOSTICS_COLUMNS) + "\n")
            elif (path / DIAGNOSTICS_FILE).exists():
                (path / DIAGNOSTICS_FILE).unlink()
            writer = RunWriter(path, lock_file, checkpoint)
    except BaseException:
        lock_file.close()
        raise
    return writer


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
    lock_path = path / LOCK_FILE
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
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def read_config_document(config_path: Path) -> dict:
    """config.json as a dict, checked for its schema version and the types of its blocks,
    so that a damaged file is refused before anything trains (RunDirError, one line)."""
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise RunDirError(
            f"{config_path} is unreadable or corrupt ({error}); rerun the study or restore the file"
        ) from None
    if not isinstance(document, dict) or "schema" not in document or "config" not in document:
        raise RunDirError(
            f"{config_path} is not an actlab config (no 'schema'/'config' keys); rerun the study"
        )
    if document["schema"] != SCHEMA_VERSION:
        raise RunDirError(
            f"{config_path} has schema version {document['schema']!r}, this actlab reads version "
            f"{SCHEMA_VERSION}; use the actlab version that wrote it"
        )
    for key, kind in (
        ("config", dict),
        ("members", list),
        ("dataset", dict),
        ("environment", dict),
    ):
        if key in document and not isinstance(document[key], kind):
            raise RunDirError(
                f"{config_path}: {key!r} is a {type(document[key]).__name__}, expected a "
                f"{kind.__name__}; rerun the study or restore the file"
            )
    return document


def config_from_document(document: dict, config_path: Path) -> ExperimentConfig:
    try:
        return ExperimentConfig.from_dict(document["config"])
    except (ConfigError, TypeError, ValueError, AttributeError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunDirError(
            f"{config_path} holds an invalid config ({text}); rerun the study or restore the file"
        ) from None


# The dataset fields that must agree to resume: a study continued on other data would mix
# two experiments in one table.
DATA_KEYS = ("train_size", "val_size", "test_size", "input_shape", "num_classes", "fingerprint")


def _same_model_file(mine: ExperimentConfig, theirs: ExperimentConfig) -> bool:
    """Two references to the same NAME in the same file (resolved paths agree), however the
    path was written (``net.py:build``, ``./net.py:build``, ``../x/net.py:build``); whether
    its content changed is the source hash's question."""
    name, other = mine.model.rpartition(":")[2], theirs.model.rpartition(":")[2]
    if name != other or not mine.model_source or not theirs.model_source:
        return False
    return Path(mine.model_source).resolve() == Path(theirs.model_source).resolve()


def _check_same_study(
    config_path: Path, config: ExperimentConfig, dataset: dict
) -> ExperimentConfig:
    """The run's config, when it is the same study as `config` on the same data; more
    epochs than the run has are the same study trained longer (not for a depth study: only
    the last depth's checkpoint is kept, so the earlier depths could not continue)."""
    document = read_config_document(config_path)
    existing = config_from_document(document, config_path)
    mine, theirs = config.study_key(), existing.study_key()
    mine["seeds"], theirs["seeds"] = config.seeds, existing.seeds
    if config.epochs > existing.epochs and len(config.depth_list) > 1:
        raise RunDirError(
            f"{config_path.parent} holds a depth study of {existing.epochs} epochs; a depth "
            "study cannot be continued with more --epochs (only its last depth has a "
            "checkpoint); choose another --out"
        )
    if config.epochs > existing.epochs:
        theirs["epochs"] = config.epochs
    differing = [name for name in mine if mine[name] != theirs.get(name)]
    if "model" in differing and _same_model_file(config, existing):
        differing.remove("model")  # another relative path to the same file: the same study
    if "model_sha256" in differing and mine["model"] == theirs.get("model"):
        source = config.model_source or config.model
        raise RunDirError(
            f"{source} changed since the run in {config_path.parent} started (sha256 "
            f"{str(theirs.get('model_sha256'))[:12]} there, {str(mine['model_sha256'])[:12]} now); "
            "restore the file to resume, or choose another --out"
        )
    if differing:
        details = ", ".join(
            f"{name} {theirs.get(name)!r} there, {mine[name]!r} asked" for name in differing
        )
        raise RunDirError(
            f"{config_path.parent} holds a different study ({details}); "
            "choose another --out or repeat the original options"
        )
    stored = document.get("dataset") or {}
    changed = [
        name
        for name in DATA_KEYS
        if name in stored and name in dataset and stored[name] != dataset[name]
    ]
    if changed:
        details = ", ".join(
            f"{name} {_short(stored[name])} there, {_short(dataset[name])} now" for name in changed
        )
        raise RunDirError(
            f"{config_path.parent} was started on other data ({details}); restore the "
            "original data, or choose another --out to start a new study on this data"
        )
    return existing


def _extend_epochs(config_path: Path, old: int, new: int) -> None:
    """Record in config.json that the study now trains for `new` epochs (it had `old`)."""
    document = json.loads(config_path.read_text(encoding="utf-8"))
    document["config"]["epochs"] = new
    document.setdefault("continued", []).append(
        {
            "from_epochs": old,
            "to_epochs": new,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
    )
    _write_atomic(config_path, json.dumps(document, indent=2) + "\n")


def _short(value: object) -> str:
    text = repr(value)
    return text[:19] + "…'" if isinstance(value, str) and len(text) > 20 else text


def _load_checkpoint(path: Path) -> dict | None:
    import torch

    checkpoint_path = path / CHECKPOINT_FILE
    if not checkpoint_path.exists():
        return None
    if not checkpoint_path.is_file():
        raise RunDirError(
            f"{checkpoint_path} is not a file; remove it to restart the run, or choose another --out"
        )
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # a corrupt file: the atomic rename makes this unlikely
        raise RunDirError(
            f"{checkpoint_path} is corrupt ({type(error).__name__}); delete it to restart the run"
        ) from None
    missing = [
        key
        for key in ("depth_index", "epoch", "engine")
        if not isinstance(checkpoint, dict) or key not in checkpoint
    ]
    if missing or not isinstance(checkpoint.get("epoch"), int):
        raise RunDirError(
            f"{checkpoint_path} lacks {', '.join(missing) or 'a valid epoch'}; it was not written "
            "by actlab compare: delete it to restart the run"
        )
    return checkpoint


def _reconcile_with_checkpoint(
    path: Path, config: ExperimentConfig, checkpoint: dict | None
) -> tuple[dict[str, list[list[str]]], list[str]]:
    """Make the CSVs hold exactly the rows of the epochs the checkpoint covers.

    Rows beyond the checkpoint (a crash between the append and the checkpoint) are dropped:
    those epochs are trained again. When the checkpoint carries its copy of the rows
    ("rows"), rows the CSV lost are restored from it, and a CSV row that contradicts it is
    refused (RunDirError naming the file and the fix). Returns the rows kept and notes that
    say what was repaired."""
    depth_index = {("" if d is None else str(d)): i for i, d in enumerate(config.depth_list)}
    done = (-1, 0) if checkpoint is None else (checkpoint["depth_index"], checkpoint["epoch"])
    saved = checkpoint.get("rows") if checkpoint is not None else None
    if saved is None and checkpoint is None:
        saved = {METRICS_FILE: [], DIAGNOSTICS_FILE: []}
    if saved is not None and not (
        isinstance(saved, dict) and all(isinstance(v, list) for v in saved.values())
    ):
        raise RunDirError(
            f"{path / CHECKPOINT_FILE} holds a damaged copy of the rows; delete it to restart the run"
        )

    def position(record: list[str]) -> tuple[int, int] | None:
        """(depth index, epoch) of a row; None for a row that is not one (blank, garbage)."""
        try:
            return depth_index.get(record[0], len(depth_index)), int(record[5])
        except (IndexError, ValueError):
            return None

    def covered(record: list[str]) -> bool:
        where = position(record)
        return where is not None and where <= done

    records: dict[str, list[list[str]]] = {}
    notes: list[str] = []
    for name, columns in ((METRICS_FILE, METRICS_COLUMNS), (DIAGNOSTICS_FILE, DIAGNOSTICS_COLUMNS)):
        file = path / name
        expected = None if saved is None else [list(map(str, r)) for r in saved.get(name, [])]
        if file.exists():
            parsed = parse_csv_text(file.read_text(encoding="utf-8", errors="replace"))
        elif name == DIAGNOSTICS_FILE and not expected:
            records[name] = []
            continue
        else:
            parsed = ParsedCsv([], True, [])
        body = parsed.records[1:] if parsed.records else []
        has_header = bool(parsed.records) and tuple(parsed.records[0]) == columns
        if parsed.records and not has_header:
            body = parsed.records  # a header lost or damaged: judge the rows alone
        kept = [r for r in body if covered(r)]
        if expected is None:  # a checkpoint from before rows were kept in it
            expected = kept
        if kept == expected:
            if len(kept) != len(body) or not parsed.complete or not has_header:
                unreadable = sum(position(r) is None for r in body)
                beyond = len(body) - len(kept) - unreadable + (0 if parsed.complete else 1)
                if beyond:
                    notes.append(
                        f"{name}: dropped {beyond} row(s) beyond the checkpoint "
                        f"(epoch {done[1]}); those epochs are trained again"
                    )
                if unreadable:
                    notes.append(f"{name}: dropped {unreadable} blank or unreadable line(s)")
                _write_atomic(file, _csv_text(columns, kept))
        elif kept == expected[: len(kept)]:
            notes.append(
                f"{name}: {len(expected) - len(kept)} row(s) of complete epochs were missing "
                f"from {file}; restored them from the copy in {CHECKPOINT_FILE}"
            )
            _write_atomic(file, _csv_text(columns, expected))
        else:
            line = next(
                (i for i, (a, b) in enumerate(zip(kept, expected, strict=False)) if a != b),
                min(len(kept), len(expected)),
            )
            raise RunDirError(
                f"{file}: row {line + 1} differs from the copy of that row in {CHECKPOINT_FILE}; "
                f"restore the file, or delete it to have it rewritten from {CHECKPOINT_FILE}"
            )
        records[name] = expected
    return records, notes


def _record(row: dict, columns: tuple[str, ...]) -> list[str]:
    """A row as the strings csv.writer writes (str of a float is its shortest repr)."""
    return ["" if row.get(name) is None else str(row[name]) for name in columns]


def _csv_text(columns: Sequence[str], records: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(records)
    return buffer.getvalue()


def _append_records(file: Path, records: Sequence[Sequence[str]]) -> None:
    try:
        with open(file, "a", encoding="utf-8", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(records)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:  # a full disk: a row cut off here is dropped on reopening
        if error.filename is None:
            error.filename = str(file)
        raise


def _replace_atomic(file: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write `file` whole or not at all: a temp file beside it, fsync, rename, fsync the
    directory. The temp file is removed when writing fails (a full disk, an interrupt)."""
    temp = file.with_name(file.name + ".tmp")
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, file)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(file)  # name the file in the one-line message
        raise
    _fsync_dir(file.parent)


def write_text_atomic(file: str | Path, text: str) -> Path:
    """Replace a text file atomically (see `_replace_atomic`); used for reports too."""
    file = Path(file)
    _replace_atomic(file, lambda handle: handle.write(text.encode("utf-8")))
    return file


_write_atomic = write_text_atomic


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ParsedCsv:
    """Records of an append-only CSV (header first). `complete` is False when the last
    record was cut off (no final newline); `lines` gives each record's first line number."""

    records: list[list[str]]
    complete: bool
    lines: list[int]
    cut_line: int | None = None  # the line where the cut-off record began


def parse_csv_text(text: str) -> ParsedCsv:
    """Parse with a real CSV reader: quoted fields may hold commas, newlines and any other
    character, so no line splitter may be used on these files. A final record without its
    newline was cut off by a crash and is left out (complete=False)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    records, lines, start = [], [], 1
    try:
        for record in reader:
            records.append(record)
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error:  # e.g. a NUL byte: keep what was read before it
        return ParsedCsv(records, False, lines, start)
    complete = text.endswith("\n") or not text
    if not complete and records:
        return ParsedCsv(records[:-1], False, lines[:-1], lines[-1])
    return ParsedCsv(records, complete, lines)


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
    metrics: pd.DataFrame  # METRICS_COLUMNS (+ "run": index into `paths`)
    diagnostics: pd.DataFrame | None  # DIAGNOSTICS_COLUMNS (+ "run"), None when absent
    problems: list[str] = field(default_factory=list)
    environments: list[dict] = field(default_factory=list)  # one per path

    @property
    def path(self) -> Path:
        return self.paths[0]


def read_run(path: str | Path) -> RunData:
    """Read one run directory; never changes it. Damage that leaves usable data (a CSV cut
    off mid-row) is repaired in memory and described in `problems`; anything else raises
    RunDirError with one line."""
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
    document = read_config_document(config_path)
    config = config_from_document(document, config_path)

    problems: list[str] = []
    metrics = _read_csv(path / METRICS_FILE, METRICS_COLUMNS, problems)
    if metrics is None:
        problems.append(f"{METRICS_FILE}: missing; no epoch was completed")
        metrics = _typed(pd.DataFrame(columns=list(METRICS_COLUMNS)), METRICS_COLUMNS)
    diagnostics = _read_csv(path / DIAGNOSTICS_FILE, DIAGNOSTICS_COLUMNS, problems)
    metrics["run"] = 0
    if diagnostics is not None:
        diagnostics["run"] = 0
    environment = document.get("environment") or {}
    return RunData(
        paths=[path],
        config=config,
        members=list(document.get("members") or []),
        dataset=dict(document.get("dataset") or {}),
        environment=environment,
        created=str(document.get("created", "")),
        metrics=metrics,
        diagnostics=diagnostics,
        problems=problems,
        environments=[environment],
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
