"""What every verb of the `actlab` command shares: exit codes, the parser and help classes,
one-line errors, and stdout that survives a closed pipe.

Exit codes: 0 success; 1 an environment failure (a full disk, a read-only or missing
path: one line on stderr naming the path); 2 a user error (one line on stderr, no
traceback); 3 the study finished but some members diverged; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

EXIT_OK = 0
EXIT_ENVIRONMENT = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown in --help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse._StoreTrueAction | argparse._VersionAction):
            return action.help  # "(default: False)" says nothing
        if action.default is None or action.default == []:
            return action.help  # "(default: None)" says nothing; the help says what it means
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2) that says where help is, like every
    other error of actlab, instead of the usage block followed by the error."""

    def error(self, message: str):
        self.exit(
            EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)}; see `{self.prog} --help`\n"
        )


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, examples: str
) -> argparse.ArgumentParser:
    """A verb's parser: its one-line help, examples in the epilog, defaults shown."""
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + examples,
        formatter_class=HelpFormatter,
    )


def one_line(text: str) -> str:
    """An error message as one line, whatever a path or spec in it holds."""
    return " ".join(text.splitlines())  # also \r, \f, \x1c-\x1e, \x85, \u2028, \u2029


# What to do about an OSError, by errno: the message names the path, this the way out.
_OS_ADVICE = {
    errno.ENOSPC: "free some disk space or choose another location; a study resumes from its last complete epoch",
    errno.EDQUOT: "free some space in your quota or choose another location",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EACCES: "you may not write or read there; choose another location or fix its permissions",
    errno.EPERM: "the operation is not permitted there; choose another location",
    errno.ENOENT: "check the path (a folder in it does not exist)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "a folder is where a file belongs; remove or rename it, or choose another path",
    errno.EEXIST: "remove it or choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
    errno.ENOMEM: "the machine is out of memory; close other programs or make the study smaller",
}


def os_error_text(error: OSError) -> str:
    """One line for an OSError: the path, what went wrong, and the way out."""
    path = error.filename if error.filename is not None else ""
    what = error.strerror or type(error).__name__
    advice = _OS_ADVICE.get(error.errno, "check the path and try again")
    where = f"{path}: " if path else ""
    return one_line(f"{where}{what}; {advice}")


def warn(message: str) -> None:
    """One warning line on stderr, above a progress bar if one is shown."""
    from tqdm import tqdm

    tqdm.write(f"actlab: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    """One note line on stderr."""
    print(f"actlab: note: {message}", file=sys.stderr)


def quiet_store_logs() -> None:
    """MLflow logs its database migrations at INFO between the per-epoch lines; keep them
    for warnings."""
    import logging

    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class PipeSafe:
    """stdout that survives a closed pipe (``actlab compare ... | head -1``): once the reader
    is gone, further output goes to /dev/null instead of raising BrokenPipeError, so
    training, the run directory and the report go on. Everything else is the stream's."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.broken = True
        # Point the descriptor at /dev/null, so that the interpreter's own flush at exit
        # does not fail on the same pipe ("Exception ignored ... BrokenPipeError").
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
