"""The only reader and writer of run directories (see docs/run-directory.md, schema 1).

Two sections, kept apart on purpose: writing (used by the engine's caller while a study
runs: lock, config, append-only CSVs, atomic checkpoints) and reading (used by the report:
a run directory alone is enough to rebuild everything).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import platform
import socket
from collections.abc import Sequence
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
# appended and fsynced as each epoch ends, then the checkpoint is replaced atomically, so
# after a crash the checkpoint is at most one epoch behind the CSVs: reopening the
# directory drops the rows beyond the checkpoint, and nothing is lost or duplicated.


def describe_environment(device: str, threads: int) -> dict:
    """Versions and hardware recorded in config.json (no hidden state: DESIGN.md rule 5)."""
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

    def __init__(self, path: Path, lock_file: IO[str], checkpoint: dict | None) -> None:
        self.path = path
        self._lock_file = lock_file
        self.checkpoint = checkpoint

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
        _append_csv(self.path / METRICS_FILE, METRICS_COLUMNS, metrics_rows)
        if diagnostics_rows:
            _append_csv(self.path / DIAGNOSTICS_FILE, DIAGNOSTICS_COLUMNS, diagnostics_rows)

    def save_checkpoint(self, state: dict) -> None:
        """Write checkpoint.pt atomically: temp file, fsync, rename, fsync the directory.

        `state` must hold "depth_index" and "epoch" (the last complete epoch of that depth)."""
        import torch

        target = self.path / CHECKPOINT_FILE
        temp = self.path / (CHECKPOINT_FILE + ".tmp")
        with open(temp, "wb") as handle:
            torch.save({"schema": SCHEMA_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        _fsync_dir(self.path)


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
    CSV headers. One with results must hold the same study (`study_key` and seeds), else
    RunDirError names the differing keys; its CSV rows beyond the checkpoint (a crash
    between the append and the checkpoint) are dropped. `resume=True` insists that there is
    a run to continue.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    lock_file = _lock(path)
    try:
        config_path = path / CONFIG_FILE
        if config_path.is_file() and (resume or _has_progress(path)):
            _check_same_study(config_path, config)
            checkpoint = _load_checkpoint(path)
            _truncate_to_checkpoint(path, config, checkpoint)
            if config.diagnostics and not (path / DIAGNOSTICS_FILE).exists():
                _write_atomic(path / DIAGNOSTICS_FILE, ",".join(DIAGNOSTICS_COLUMNS) + "\n")
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
    except BaseException:
        lock_file.close()
        raise
    return RunWriter(path, lock_file, checkpoint)


def _has_progress(path: Path) -> bool:
    """Whether a run directory holds any result: a checkpoint or a metrics row."""
    if (path / CHECKPOINT_FILE).exists():
        return True
    try:
        with open(path / METRICS_FILE, encoding="utf-8") as handle:
            handle.readline()
            return bool(handle.readline())
    except FileNotFoundError:
        return False


def _lock(path: Path) -> IO[str]:
    lock_path = path / LOCK_FILE
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


def _check_same_study(config_path: Path, config: ExperimentConfig) -> None:
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
        existing = ExperimentConfig.from_dict(document["config"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"{config_path} is unreadable ({error}); choose another --out") from None
    mine, theirs = config.study_key(), existing.study_key()
    mine["seeds"], theirs["seeds"] = config.seeds, existing.seeds
    differing = [name for name in mine if mine[name] != theirs.get(name)]
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


def _load_checkpoint(path: Path) -> dict | None:
    import torch

    checkpoint_path = path / CHECKPOINT_FILE
    if not checkpoint_path.is_file():
        return None
    try:
        return torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file: the atomic rename makes this unlikely
        raise RunDirError(
            f"{checkpoint_path} is corrupt ({type(error).__name__}); delete it to restart the run"
        ) from None


def _truncate_to_checkpoint(path: Path, config: ExperimentConfig, checkpoint: dict | None) -> None:
    """Keep only the rows of epochs the checkpoint covers (rows are in training order)."""
    depth_index = {("" if d is None else str(d)): i for i, d in enumerate(config.depth_list)}
    done = (-1, 0) if checkpoint is None else (checkpoint["depth_index"], checkpoint["epoch"])

    def covered(row: dict) -> bool:
        return (depth_index.get(row["depth"], len(depth_index)), int(row["epoch"])) <= done

    for name, columns in ((METRICS_FILE, METRICS_COLUMNS), (DIAGNOSTICS_FILE, DIAGNOSTICS_COLUMNS)):
        file = path / name
        if not file.is_file():
            continue
        text = file.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # cut off mid-row by a crash
        body = lines[1:]
        kept = [
            line
            for line in body
            if covered(dict(zip(columns, next(csv.reader([line])), strict=False)))
        ]
        if len(kept) != len(body) or len(lines) != len(text.splitlines(keepends=True)) or not lines:
            _write_atomic(file, ",".join(columns) + "\n" + "".join(kept))


def _append_csv(file: Path, columns: tuple[str, ...], rows: Sequence[dict]) -> None:
    with open(file, "a", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for row in rows:
            writer.writerow(["" if row.get(name) is None else row[name] for name in columns])
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomic(file: Path, text: str) -> None:
    temp = file.with_name(file.name + ".tmp")
    with open(temp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, file)
    _fsync_dir(file.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
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
    try:
        config = ExperimentConfig.from_dict(document["config"])
    except (ConfigError, TypeError) as error:
        raise RunDirError(
            f"{config_path} holds an invalid config ({error}); rerun the study"
        ) from None

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
    """Read an append-only CSV. The writer ends every row with a newline and flushes, so a
    last line without one was cut off (a killed process, a full disk): drop it, keep the rest."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirError(
            f"{path} is unreadable ({error}); rerun the study or restore the file"
        ) from None
    lines = text.splitlines(keepends=True)
    if not lines:
        problems.append(f"{path.name}: empty file (no header); no rows read")
        return _typed(pd.DataFrame(columns=list(columns)), columns)
    header = lines[0].rstrip("\r\n").split(",")
    if tuple(header) != columns:
        raise RunDirError(
            f"{path} has columns {header}, expected {list(columns)}; it was not written by this actlab version"
        )
    rows = lines[1:]
    if rows and not rows[-1].endswith("\n"):
        problems.append(
            f"{path.name}: last row cut off mid-row (line {len(lines)}), kept {len(rows) - 1} complete rows"
        )
        rows = rows[:-1]
    kept = []
    for number, line in enumerate(rows, start=2):
        if len(next(csv.reader([line]), [])) != len(columns):
            problems.append(
                f"{path.name}: line {number} has the wrong number of fields; skipped it"
            )
            continue
        kept.append(line)
    frame = pd.read_csv(
        io.StringIO(lines[0] + "".join(kept)), dtype={"activation": str, "status": str}
    )
    return _typed(frame, columns)


def _typed(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = frame.copy()
    for name in columns:
        if name in ("activation", "status"):
            frame[name] = frame[name].astype("string").fillna("").astype(object)
        elif name in ("depth",):
            frame[name] = pd.to_numeric(frame[name]).astype("Int64")
        elif name in ("member", "seed", "epoch", "layer"):
            frame[name] = pd.to_numeric(frame[name]).astype("int64")
        else:
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
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
