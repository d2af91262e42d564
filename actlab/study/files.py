"""Durable writes of a run directory's files: whole or not at all.

Appends are fsynced; replacements go to a temp file named for its writer (pid and a random
part, so that two processes never share one), fsynced, renamed into place, and the
directory fsynced. A temp file of a writer that died is removed by the next write of the
same file (see docs/run-directory.md).
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def append_records(file: Path, records: Sequence[Sequence[str]]) -> None:
    try:
        with open(file, "a", encoding="utf-8", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(records)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:  # a full disk: a row cut off here is dropped on reopening
        if error.filename is None:
            error.filename = str(file)
        raise


def replace_atomic(file: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write `file` whole or not at all: a temp file beside it, fsync, rename, fsync the
    directory. The temp file is removed when writing fails (a full disk, an interrupt)."""
    # A name of its own per writer: two processes writing the same file (a report written
    # while the study writes its own) never share, truncate or rename each other's temp.
    _remove_stale_temps(file)
    try:
        prefix = f".{file.name}.{os.getpid()}."
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=file.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it, not mkstemp's 0600
    except OSError as error:
        error.filename = str(file)
        raise
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
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


def _remove_stale_temps(file: Path) -> None:
    """Remove the temp files of `file` left by writers that died (killed mid-write): their
    names carry the writer's pid, ``.NAME.PID.XXXX.tmp``; a live writer's is left alone."""
    with contextlib.suppress(OSError):
        for temp in file.parent.glob(f".{file.name}.*.tmp"):
            pid = temp.name[len(file.name) + 2 :].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    temp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text_atomic(file: str | Path, text: str) -> Path:
    """Replace a text file atomically (see `_replace_atomic`); used for reports too."""
    file = Path(file)
    replace_atomic(file, lambda handle: handle.write(text.encode("utf-8")))
    return file


_write_atomic = write_text_atomic


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
