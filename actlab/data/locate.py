"""Where a registered dataset's files are: the folders searched in order (``data_dir``,
``$ACTLAB_DATA``, the user cache, the system's dataset folders), the file names each layout
may use (MNIST-style IDX files, the CIFAR-10 binary archive or batches, ``idx:DIR``), the
download into the cache when no folder has them, and the error that says how to get them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from actlab.data import download as dl
from actlab.data.registry import (
    CIFAR_ARCHIVE,
    CIFAR_TEST_BATCH,
    CIFAR_TRAIN_BATCHES,
    IDX_FILES,
    IDX_ROLES,
    REGISTRY,
    DatasetSpec,
)
from actlab.errors import DataError

# Searched after data_dir, $ACTLAB_DATA and the user cache; a module-level list so tests can
# hide the machine's own datasets.
SYSTEM_DIRS: list[str] = ["/usr/share/datasets"]


def cache_dir() -> Path:
    """Where downloads go: $XDG_CACHE_HOME/actlab, default ~/.cache/actlab."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "actlab"


def search_dirs(name: str, data_dir: str | None = None) -> list[Path]:
    """Folders searched for a registered dataset's files, in order."""
    spec = REGISTRY[name]
    dirs: list[Path] = []
    roots = [data_dir, os.environ.get("ACTLAB_DATA") or None]
    for root in roots:
        if root:
            root_path = Path(root).expanduser()
            dirs += [root_path / name, root_path]
            if spec.torchvision_dir:
                dirs.append(root_path / spec.torchvision_dir / "raw")
    dirs.append(cache_dir() / name)
    dirs += [Path(system) / name for system in SYSTEM_DIRS]
    return list(dict.fromkeys(dirs))


def find_on_disk(spec: DatasetSpec, data_dir: str | None) -> tuple[Path, dict[str, Path]] | None:
    """The first folder holding the whole dataset, and its files by role."""
    for folder in search_dirs(spec.name, data_dir):
        files = _files_in(spec, folder)
        if files is not None:
            return folder, files
    return None


def _files_in(spec: DatasetSpec, folder: Path) -> dict[str, Path] | None:
    if not folder.is_dir():
        return None
    if spec.kind == "idx":
        return _idx_files_exact(folder)
    if spec.kind == "cifar10":
        return _cifar_files(folder)
    return None


def _idx_files_exact(folder: Path) -> dict[str, Path] | None:
    """The four MNIST-layout files by role (name, name.gz, or Kaggle's train-images.idx3-ubyte)."""
    files = {}
    for role, stem in IDX_FILES.items():
        dotted = stem.replace("-idx", ".idx")
        for candidate in (stem + ".gz", stem, dotted, dotted + ".gz"):
            if (folder / candidate).is_file():
                files[role] = folder / candidate
                break
        else:
            return None
    return files


def idx_files_any(folder: Path) -> dict[str, Path]:
    """For idx:DIR: the file starting with each role (t10k- or test-), .gz preferred."""
    if not folder.is_dir():
        raise DataError(
            f"idx:{folder}: not a folder; give a folder with train/t10k images/labels IDX files"
        )
    files = {}
    for role in IDX_ROLES:
        prefixes = (role, role.replace("t10k", "test"))
        matches = sorted(
            p
            for p in folder.iterdir()
            if p.is_file()
            and p.name.startswith(prefixes)
            and not p.name.startswith(".")
            and not p.name.endswith(".part")
        )
        if not matches:
            raise DataError(
                f"idx:{folder}: no {role}* file; expected {', '.join(r + '*' for r in IDX_ROLES)}"
            )
        names = {p.name.removesuffix(".gz") for p in matches}
        if len(names) > 1:
            raise DataError(
                f"idx:{folder}: several {role}* files ({', '.join(p.name for p in matches)}); keep one"
            )
        gz = [p for p in matches if p.name.endswith(".gz")]
        files[role] = gz[0] if gz else matches[0]
    return files


def _cifar_files(folder: Path) -> dict[str, Path] | None:
    if (folder / CIFAR_ARCHIVE).is_file():
        return {"archive": folder / CIFAR_ARCHIVE}
    for sub in (folder / "cifar-10-batches-bin", folder):
        wanted = (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)
        if all((sub / f).is_file() for f in wanted):
            return {f: sub / f for f in wanted}
    return None


def how_to_get(spec: DatasetSpec, download_failed: bool = False) -> str:
    ways = [spec.install_hint] if spec.install_hint else []
    if spec.kind != "digits":
        ways.append("pass --data-dir")
        urls = dl.file_urls(spec.name, spec.files[0]) if spec.files else []
        if urls:
            url = urls[0] if len(spec.files) == 1 else urls[0].rsplit("/", 1)[0] + "/"
            if download_failed:
                ways.append(f"or fetch {url} by hand into {cache_dir() / spec.name}")
            else:
                ways.append(f"or allow the download from {url}")
    return ", ".join(ways)


def not_found(
    spec: DatasetSpec, data_dir: str | None, why: str, download_failed: bool = False
) -> DataError:
    searched = ", ".join(str(d) for d in search_dirs(spec.name, data_dir))
    return DataError(
        f"{spec.name} not found in [{searched}]{why}; {how_to_get(spec, download_failed)}"
        + _offline_alternative(spec, data_dir)
    )


def _offline_alternative(spec: DatasetSpec, data_dir: str | None) -> str:
    """ "; fashion-mnist is here (/usr/share/...): --dataset fashion-mnist" when a dataset of
    the same kind and shape is on disk (offline, the nearest study that can run now)."""
    for name, other in REGISTRY.items():
        if name == spec.name or other.kind != spec.kind or other.input_shape != spec.input_shape:
            continue
        found = find_on_disk(other, data_dir)
        if found is not None:
            return f"; {name} is on this machine ({found[0]}): --dataset {name} runs offline"
    return ""


def fetch(spec: DatasetSpec, data_dir: str | None, progress: bool) -> tuple[Path, dict[str, Path]]:
    """Download the missing files into the cache; return the folder and its files."""
    target = cache_dir() / spec.name
    # Folders this attempt creates, removed again if it fails empty-handed (no empty
    # ~/.cache/actlab/mnist left behind by an offline machine).
    created = [folder for folder in (target.parent, target) if not folder.exists()]
    try:
        for filename in spec.files:
            if not (target / filename).is_file():
                md5 = dl.CHECKSUMS.get(spec.name, {}).get(filename)
                dl.download(
                    dl.file_urls(spec.name, filename), target / filename, md5=md5, progress=progress
                )
    except DataError as error:
        for folder in reversed(created):
            with contextlib.suppress(OSError):  # not empty, or not ours to remove
                folder.rmdir()
        raise not_found(
            spec, data_dir, f" and the download failed ({error})", download_failed=True
        ) from None
    files = _files_in(spec, target)
    if files is None:  # pragma: no cover - the loop above put every file there
        raise not_found(spec, data_dir, "")
    return target, files
