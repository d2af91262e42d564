"""Official mirrors, known checksums, and a download that never leaves a half file.

A download streams into a temp file in the target folder (with a tqdm bar on stderr),
checks the byte count against Content-Length and the MD5 against the published sum, and
only then `os.replace`s the temp file into place (atomic on POSIX). Any failure removes the
temp file and the next mirror is tried.

Mirrors are a plain module-level dict (`MIRRORS`); `$ACTLAB_MIRRORS` (comma-separated base
URLs) replaces them for every dataset, which is how tests point the downloader at a local
server.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from actlab.errors import DataError

DEFAULT_TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20

# Base URLs, tried in turn. Sources: torchvision.datasets (MNIST, FashionMNIST, KMNIST) and
# the datasets' home pages.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "kmnist": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# MD5 of each official file, as published (torchvision's lists; CIFAR-10's home page).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "kmnist": {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
    "cifar10": {
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    },
}

# MD5 of the decompressed files (keyed by the name without .gz): any gzip of the right
# bytes, or the raw file, checks out against these. Same sources as above (torchvision's
# former `raw_data` lists; the MNIST ones are widely quoted with size 47040016).
CONTENT_CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# Other known-good .gz files. Debian's dataset-fashion-mnist re-gzips the upstream files (its
# content matches CONTENT_CHECKSUMS); listing its sums spares hashing the decompressed bytes.
ALTERNATE_CHECKSUMS: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": ("cf8536b0aa1a6ac5fa3f23001093305c",),
        "train-labels-idx1-ubyte.gz": ("10bea18fdb374794d4bb42e356e600c9",),
        "t10k-images-idx3-ubyte.gz": ("f78720b4224f21cce2f2ccf2d7a94c9a",),
        "t10k-labels-idx1-ubyte.gz": ("0d30e22e447f3c33dab9ed536400ac01",),
    },
}


def mirrors_for(dataset: str) -> tuple[str, ...]:
    """Base URLs for `dataset`: `$ACTLAB_MIRRORS` (comma-separated) if set, else `MIRRORS`."""
    override = os.environ.get("ACTLAB_MIRRORS", "").strip()
    if override:
        return tuple(url.strip() for url in override.split(",") if url.strip())
    return MIRRORS.get(dataset, ())


def file_urls(dataset: str, filename: str) -> list[str]:
    """Full URLs of one file, one per mirror, in the order they are tried."""
    return [
        base if base.endswith(filename) else base.rstrip("/") + "/" + filename
        for base in mirrors_for(dataset)
    ]


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def known_sums(dataset: str, filename: str) -> tuple[str, ...]:
    """Every MD5 known to be right for `filename` (a .gz name, or a decompressed name)."""
    official = CHECKSUMS.get(dataset, {}).get(filename)
    content = CONTENT_CHECKSUMS.get(dataset, {}).get(filename)
    alternates = ALTERNATE_CHECKSUMS.get(dataset, {}).get(filename, ())
    return tuple(s for s in (official, content) if s) + tuple(alternates)


def checksum_status(
    dataset: str, filename: str, file_bytes: bytes, content: bytes | None = None
) -> str:
    """'ok', 'mismatch' or 'unknown' for a file read from disk.

    The stored bytes are checked against the sums of `filename`; when that fails and the
    decompressed `content` is given, it is checked against the sums of the name without .gz
    (so a re-gzipped or gunzipped copy of the right data is still 'ok').
    """
    stored_sums = known_sums(dataset, filename)
    stem = filename[:-3] if filename.endswith(".gz") else filename
    content_sums = known_sums(dataset, stem) if stem != filename else ()
    if stored_sums and md5_hex(file_bytes) in stored_sums:
        return "ok"
    if content_sums and content is not None:
        return "ok" if md5_hex(content) in content_sums else "mismatch"
    if stored_sums:
        return "mismatch"
    return "unknown"


class _DownloadFailed(Exception):
    """One mirror failed; the message says why (the caller tries the next one)."""


def download(
    urls: Sequence[str],
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download the first URL that works into `dest`, verified; return `dest`.

    Raises DataError naming every URL tried and why each failed. Nothing is left at `dest`
    (or beside it) unless the file arrived whole and, when `md5` is given, matched it.
    """
    dest = Path(dest)
    if not urls:
        raise DataError(
            f"no download mirrors for {dest.name}; set $ACTLAB_MIRRORS or place the file yourself"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"{dest.parent}: cannot create the download folder ({error.strerror or error})"
        ) from None
    failures = []
    for url in urls:
        try:
            _download_one(url, dest, md5, progress, timeout)
            return dest
        except _DownloadFailed as error:
            failures.append(f"{url}: {error}")
    raise DataError(f"could not download {dest.name}: " + "; ".join(failures))


def _download_one(url: str, dest: Path, md5: str | None, progress: bool, timeout: float) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        hasher = hashlib.md5(usedforsecurity=False)
        received = 0
        request = urllib.request.Request(url, headers={"User-Agent": "actlab"})
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            length_header = response.headers.get("Content-Length")
            expected = int(length_header) if length_header and length_header.isdigit() else None
            with _progress_bar(dest.name, expected, progress) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise _DownloadFailed(f"connection closed after {received} of {expected} bytes")
        if md5 is not None and hasher.hexdigest() != md5:
            raise _DownloadFailed(f"MD5 {hasher.hexdigest()} does not match the published {md5}")
        os.replace(tmp, dest)
    except urllib.error.HTTPError as error:
        raise _DownloadFailed(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _DownloadFailed(str(error.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise _DownloadFailed(f"{type(error).__name__}: {error}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _progress_bar(name: str, total: int | None, enabled: bool):
    from tqdm import tqdm  # imported here so that loading from disk never pays for it

    return tqdm(
        total=total,
        desc=f"downloading {name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
    )
