"""Text corpora for language-model studies: ``--dataset text:PATH`` and ``text:stdlib``.

- Byte-level: the tokens of a UTF-8 file are its bytes, a vocabulary of 256. The file must
  decode as UTF-8 (a binary file given by mistake is refused, with the offset of the first
  bad byte).
- Split by position, never shuffled: train, then validation, then test. The test split is
  the last TEST_FRACTION of the bytes; the validation split (``--val-size``: a fraction of
  the rest, or a byte count) the bytes just before it. No window of one split reaches into
  another: each split is windowed on its own bytes.
- Evaluation reads each split as consecutive windows of `context` inputs whose targets are
  the next bytes (window i: inputs ``s[iT : iT+T]``, targets ``s[iT+1 : iT+T+1]``), so every
  byte but the first of a split is predicted exactly once (a tail shorter than a window is
  left out). Training draws random windows anywhere in the train split (see
  actlab.engine.lm_trainer); an epoch is as many windows as the train split holds.
- ``text:stdlib``: a corpus every machine has offline, the Python standard library's own
  source: STDLIB_FILES (a fixed, sorted list) read from ``sysconfig``'s stdlib path and
  joined, capped at STDLIB_CAP bytes. Its content moves with the Python version; the
  fingerprint in config.json says exactly which bytes a study trained on.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from actlab.errors import DataError

SCHEME = "text:"
VOCAB = 256
TEST_FRACTION = 0.1
STDLIB = "stdlib"
STDLIB_CAP = 4_000_000  # bytes
# Modules present in every CPython 3.10+ source tree, sorted; missing ones are skipped (and
# the bytes read are fingerprinted either way).
STDLIB_FILES = (
    "_pydecimal.py", "abc.py", "argparse.py", "ast.py", "base64.py", "bisect.py",
    "calendar.py", "collections/__init__.py", "configparser.py", "contextlib.py", "copy.py",
    "csv.py", "dataclasses.py", "datetime.py", "difflib.py", "doctest.py",
    "email/message.py", "enum.py", "fractions.py", "ftplib.py", "functools.py",
    "gettext.py", "gzip.py", "heapq.py", "http/client.py", "http/server.py", "imaplib.py",
    "inspect.py", "ipaddress.py", "json/decoder.py", "json/encoder.py", "locale.py",
    "logging/__init__.py", "mailbox.py", "numbers.py", "optparse.py", "os.py", "pathlib.py",
    "pdb.py", "pickle.py", "pickletools.py", "platform.py", "pprint.py", "pydoc.py",
    "random.py", "shutil.py", "smtplib.py", "socket.py", "statistics.py", "string.py",
    "subprocess.py", "tarfile.py", "tempfile.py", "textwrap.py", "threading.py",
    "tokenize.py", "traceback.py", "typing.py", "unittest/case.py", "urllib/parse.py",
    "urllib/request.py", "uuid.py", "warnings.py", "zipfile.py",
)  # fmt: skip


@dataclass(frozen=True)
class TextDataset:
    """A byte corpus split by position, windowed for a context of `context` tokens.

    x_* / y_*: the evaluation windows (N, context) of inputs and targets (uint8); train_bytes:
    the whole train split, where training draws its random windows."""

    name: str
    train_bytes: Tensor
    val_bytes: Tensor
    test_bytes: Tensor
    context: int
    source: str

    num_classes: int = VOCAB
    task: str = "lm"

    @property
    def input_shape(self) -> tuple[int]:
        return (self.context,)

    def windows(self, split: Tensor) -> tuple[Tensor, Tensor]:
        return windows(split, self.context)

    @property
    def train_size(self) -> int:
        """Windows in an epoch: as many as the train split holds end to end."""
        return window_count(len(self.train_bytes), self.context)

    @property
    def val_size(self) -> int:
        return window_count(len(self.val_bytes), self.context)

    @property
    def test_size(self) -> int:
        return window_count(len(self.test_bytes), self.context)

    def summary(self) -> dict:
        """The "dataset" block of a run directory's config.json."""
        return {
            "name": self.name,
            "task": self.task,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "test_size": self.test_size,
            "train_bytes": len(self.train_bytes),
            "val_bytes": len(self.val_bytes),
            "test_bytes": len(self.test_bytes),
            "source": self.source,
            "mean": None,
            "std": None,
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """SHA-256 over the three splits' bytes and the context."""
        digest = hashlib.sha256(f"text;context={self.context};".encode())
        for split in (self.train_bytes, self.val_bytes, self.test_bytes):
            digest.update(f"{len(split)};".encode())
            digest.update(split.numpy().tobytes())
        return "sha256:" + digest.hexdigest()


def window_count(size: int, context: int) -> int:
    """Consecutive windows of `context` inputs with their next-byte targets in `size` bytes."""
    return max(0, (size - 1) // context)


def windows(split: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """Inputs and targets (N, context) of the consecutive windows of a split (no overlap of
    targets: every byte but the first is a target once)."""
    n = window_count(len(split), context)
    x = split[: n * context].view(n, context)
    y = split[1 : n * context + 1].view(n, context)
    return x, y


def is_text(name: str) -> bool:
    return str(name).startswith(SCHEME)


def stdlib_corpus(cap: int = STDLIB_CAP) -> tuple[bytes, str]:
    """The bytes of STDLIB_FILES joined in order (capped), and where they came from."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, used = [], 0
    for name in STDLIB_FILES:
        path = root / name
        if path.is_file():
            parts.append(path.read_bytes())
            used += 1
    data = b"".join(parts)[:cap]
    if not data:
        raise DataError(f"text:stdlib found none of its files under {root}; give text:PATH")
    return data, f"{root} ({used} of {len(STDLIB_FILES)} files, {len(data)} bytes)"


def read_corpus(spec: str) -> tuple[bytes, str]:
    """The bytes of ``text:PATH`` / ``text:stdlib``, checked to be UTF-8 text."""
    target = spec[len(SCHEME) :] if is_text(spec) else spec
    if target == STDLIB:
        return stdlib_corpus()
    path = Path(target).expanduser()
    if not path.is_file():
        raise DataError(f"text file {target!r} not found; give --dataset text:PATH of a UTF-8 file")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{target} is not UTF-8 text (byte {error.start} cannot be decoded); give a UTF-8 "
            "text file"
        ) from None
    return data, str(path.resolve())


def split_bytes(
    size: int, val_size: float = 0, test_fraction: float = TEST_FRACTION
) -> tuple[slice, slice, slice]:
    """The train, validation and test slices of `size` bytes: consecutive, disjoint, and
    covering every byte. `val_size`: a fraction in (0, 1) of the bytes before the test
    split, or a count of bytes."""
    test_start = size - int(round(size * test_fraction))
    val = int(round(test_start * val_size)) if 0 < val_size < 1 else int(val_size)
    if val >= test_start:
        raise DataError(
            f"--val-size {val_size:g} leaves no training text ({test_start} bytes before the "
            "test split); give a smaller --val-size"
        )
    val_start = test_start - val
    return slice(0, val_start), slice(val_start, test_start), slice(test_start, size)


def load_text(
    spec: str,
    *,
    context: int,
    val_size: float = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> TextDataset:
    """Read, check and split a corpus (see the module docstring). `limit_train` /
    `limit_test` keep the first that many bytes of their split."""
    data, source = read_corpus(spec)
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    train, val, test = (tokens[s].clone() for s in split_bytes(len(tokens), val_size))
    if limit_train is not None:
        train = train[:limit_train]
    if limit_test is not None:
        test = test[:limit_test]
    for split, what in ((train, "train"), (test, "test")):
        if window_count(len(split), context) < 1:
            raise DataError(
                f"{spec}: the {what} split has {len(split)} bytes, less than one window of "
                f"--context {context} plus its target; give a longer text or a smaller --context"
            )
    return TextDataset(spec, train, val, test, context, source)
