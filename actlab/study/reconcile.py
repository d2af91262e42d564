"""The rows of a run directory against the copy its checkpoint holds: one check, two users.

Each checkpoint carries a copy of every CSV row written up to its epoch
(actlab.study.checkpoint). `plan_rows` compares the CSVs with that copy and says what the
CSVs must become, without writing anything:

- rows beyond the checkpoint (a crash between the append and the checkpoint; or a study
  still training): dropped, those epochs are trained again;
- rows of complete epochs the CSV lost (truncated, emptied, deleted): restored from the copy;
- a row that contradicts the copy (a changed value, a duplicated row): refused, RunDirError
  naming the file, the row and the way out.

`actlab compare` reopening a directory applies the plan only after every file was checked
(actlab.study.store.open_run_dir); `actlab report` runs the same check read-only
(`check_rows`) and refuses what compare would refuse or repair.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from actlab.config import ExperimentConfig
from actlab.errors import RunDirError
from actlab.study.checkpoint import Checkpoint

METRICS_FILE = "metrics.csv"
DIAGNOSTICS_FILE = "diagnostics.csv"
CHECKPOINT_FILE = "checkpoint.pt"


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


def csv_text(columns: Sequence[str], records: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(records)
    return buffer.getvalue()


@dataclass
class RowPlan:
    """What the CSVs must hold (`records`), the files to rewrite to get there (name ->
    text), and what that repairs, in words. `restored` counts rows the CSVs lost."""

    records: dict[str, list[list[str]]]
    rewrites: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    restored: int = 0


def plan_rows(
    path,
    config: ExperimentConfig,
    checkpoint: Checkpoint | None,
    texts: dict[str, str | None],
    columns: dict[str, tuple[str, ...]],
) -> RowPlan:
    """Plan the reconciliation of the CSVs (`texts`: file name -> its text, None when the
    file is absent) with `checkpoint` (None: no epoch completed). Raises RunDirError for a
    row that contradicts the checkpoint's copy; writes nothing."""
    depth_index = {("" if d is None else str(d)): i for i, d in enumerate(config.depth_list)}
    done = (-1, 0) if checkpoint is None else (checkpoint.depth_index, checkpoint.epoch)
    saved = checkpoint.rows if checkpoint is not None else {}

    def position(record: list[str]) -> tuple[int, int] | None:
        """(depth index, epoch) of a row; None for a row that is not one (blank, garbage)."""
        try:
            return depth_index.get(record[0], len(depth_index)), int(record[5])
        except (IndexError, ValueError):
            return None

    def covered(record: list[str]) -> bool:
        where = position(record)
        return where is not None and where <= done

    plan = RowPlan(records={})
    for name, names in columns.items():
        file = path / name
        expected = None if saved is None else list(saved.get(name, []))
        text = texts.get(name)
        if text is None and name == DIAGNOSTICS_FILE and not expected:
            plan.records[name] = []
            continue
        parsed = parse_csv_text(text) if text is not None else ParsedCsv([], True, [])
        body = parsed.records[1:] if parsed.records else []
        has_header = bool(parsed.records) and tuple(parsed.records[0]) == names
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
                    plan.notes.append(
                        f"{name}: dropped {beyond} row(s) beyond the checkpoint "
                        f"(epoch {done[1]}); those epochs are trained again"
                    )
                if unreadable:
                    plan.notes.append(f"{name}: dropped {unreadable} blank or unreadable line(s)")
                plan.rewrites[name] = csv_text(names, kept)
        elif kept == expected[: len(kept)]:
            lost = len(expected) - len(kept)
            plan.restored += lost
            plan.notes.append(
                f"{name}: {lost} row(s) of complete epochs were missing "
                f"from {file}; restored them from the copy in {CHECKPOINT_FILE}"
            )
            plan.rewrites[name] = csv_text(names, expected)
        else:
            line = next(
                (i for i, (a, b) in enumerate(zip(kept, expected, strict=False)) if a != b),
                min(len(kept), len(expected)),
            )
            raise RunDirError(
                f"{file}: row {line + 1} differs from the copy of that row in {CHECKPOINT_FILE}; "
                f"restore the file, or delete it to have it rewritten from {CHECKPOINT_FILE}"
            )
        plan.records[name] = expected
    return plan


def check_rows(
    path,
    config: ExperimentConfig,
    checkpoint: Checkpoint | None,
    texts: dict[str, str | None],
    columns: dict[str, tuple[str, ...]],
) -> None:
    """The read-only check of `actlab report`: RunDirError when the CSVs contradict the
    checkpoint's copy or lack rows it holds (compare would refuse or restore them). Rows
    beyond the checkpoint are a study still training (or killed mid-epoch): accepted."""
    plan = plan_rows(path, config, checkpoint, texts, columns)
    if plan.restored:
        raise RunDirError(
            f"{path} lacks {plan.restored} row(s) of complete epochs that its {CHECKPOINT_FILE} "
            "holds (a CSV was truncated or edited); rerun the same `actlab compare` with "
            f"--out {path} to restore them, then report again"
        )
