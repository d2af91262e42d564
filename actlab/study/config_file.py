"""config.json of a run directory: the environment it records, reading it back with its
checks, and whether a reopened directory holds the study asked for (docs/run-directory.md)."""

from __future__ import annotations

import json
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path

from actlab.config import ExperimentConfig
from actlab.errors import ConfigError, RunDirError
from actlab.study.files import write_text_atomic

SCHEMA_VERSION = 1


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
    for number, member in enumerate(document.get("members") or [], start=1):
        problem = _member_problem(member)
        if problem:
            raise RunDirError(
                f"{config_path}: member {number} of the members block {problem}; restore the "
                "file, or delete the members block to have it derived from the config"
            )
    return document


def _member_problem(member: object) -> str | None:
    """What is wrong with one entry of config.json's members block, or None."""
    if not isinstance(member, dict):
        return f"is a {type(member).__name__}, not an object"
    kinds = {"activation": (str,), "seed": (int,), "lr": (int, float)}
    for name, allowed in kinds.items():
        value = member.get(name)
        if not isinstance(value, allowed) or isinstance(value, bool):
            return f"has no valid {name!r}"
    depth = member.get("depth")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool)):
        return "has no valid 'depth'"
    return None


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


def check_same_study(
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


def extend_epochs(config_path: Path, old: int, new: int) -> None:
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
    write_text_atomic(config_path, json.dumps(document, indent=2) + "\n")


def _short(value: object) -> str:
    text = repr(value)
    return text[:19] + "…'" if isinstance(value, str) and len(text) > 20 else text
