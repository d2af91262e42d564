"""checkpoint.pt: the typed checkpoint of a study, and the identity that ties it to its study.

A checkpoint is written after every complete epoch (actlab.study.store.RunWriter) and holds
where the study is (depth index, depth, epoch), the engine state to continue from (one
stacked model's, or one per Ray shard), a copy of every CSV row written so far, and the
**identity** of the study it belongs to:

    config_sha256     SHA-256 of the study key (ExperimentConfig.study_key without epochs,
                      plus the seeds), so that a checkpoint of ``--seeds 3`` is never
                      adopted by a directory of ``--seeds 2``
    key               the study key itself, so that the differing options can be named and
                      an option added by a later actlab is compared at its default
    data_fingerprint  the dataset fingerprint (actlab.data.dataset.Dataset.fingerprint)
    model_sha256      the user's model source hash (None for built-in models)

A checkpoint whose identity differs from the study it is found in is refused, naming what
differs. Version 1 checkpoints (a plain dict without "identity") stay readable; their rows
are still checked against the CSVs, their identity cannot be.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from actlab.config import ExperimentConfig
from actlab.errors import RunDirError

CHECKPOINT_VERSION = 2


# Study-key entries that a newer actlab added after checkpoints of version 2 were first
# written, in order. A checkpoint without them was made before they existed, when every
# study had what their defaults give now (cross-entropy and accuracy for a classifier).
ADDED_KEYS = ("loss", "metric", "metric_name", "metric_higher_is_better")


@dataclass(frozen=True)
class StudyIdentity:
    """What makes a checkpoint belong to one study on one dataset with one model source.

    `key` is the study key itself (written since the options in ADDED_KEYS exist): an
    option that a later actlab adds is then compared at the default it has today, so that
    an upgrade never makes a study another one. Older checkpoints hold only the hash."""

    config_sha256: str
    seeds: tuple[int, ...]
    data_fingerprint: str | None
    model_sha256: str | None
    key: dict | None = None

    @classmethod
    def of(cls, config: ExperimentConfig, dataset: dict) -> StudyIdentity:
        """The identity of `config` trained on the data described by `dataset` (the
        "dataset" block of config.json)."""
        key = identity_key(config)
        return cls(
            config_sha256=_sha256(key),
            seeds=tuple(config.seeds),
            data_fingerprint=dataset.get("fingerprint"),
            model_sha256=config.model_sha256,
            key=json.loads(json.dumps(key, sort_keys=True, default=str)),
        )

    def to_dict(self) -> dict:
        document = {
            "config_sha256": self.config_sha256,
            "seeds": list(self.seeds),
            "data_fingerprint": self.data_fingerprint,
            "model_sha256": self.model_sha256,
        }
        if self.key is not None:
            document["key"] = self.key
        return document

    @classmethod
    def from_dict(cls, value: object) -> StudyIdentity | None:
        if not isinstance(value, dict):
            return None
        key = value.get("key")
        if key is not None and not isinstance(key, dict):
            return None
        try:
            return cls(
                str(value["config_sha256"]),
                tuple(int(s) for s in value["seeds"]),
                value.get("data_fingerprint"),
                value.get("model_sha256"),
                key,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def differences(
        self, other: StudyIdentity, config: ExperimentConfig | None = None
    ) -> list[str]:
        """What differs between the study of this checkpoint and `other` (the identity of
        `config`), in words."""
        out = []
        if self.seeds != other.seeds:
            out.append(f"seeds {_seeds(self.seeds)} there, {_seeds(other.seeds)} here")
        else:
            options = self._differing_options(other, config)
            if options:
                out.append(f"study options: {options}" if options != "?" else "study options")
        if self.data_fingerprint != other.data_fingerprint:
            out.append("data")
        if self.model_sha256 != other.model_sha256:
            out.append("model source")
        return out

    def _differing_options(self, other: StudyIdentity, config: ExperimentConfig | None) -> str:
        """'' when the study options agree; else the differing ones in words ('?' when only
        hashes can be compared)."""
        if self.key is not None and other.key is not None:
            theirs = dict(self.key)
            for name in set(other.key) - set(theirs):  # added since: at today's default
                theirs[name] = _default_key(config, name, other.key[name])
            names = sorted(
                n for n in set(theirs) | set(other.key) if theirs.get(n) != other.key.get(n)
            )
            return "; ".join(
                f"{n} {theirs.get(n)!r} there, {other.key.get(n)!r} here" for n in names
            )
        if self.config_sha256 == other.config_sha256:
            return ""
        if config is not None and other.key is not None:  # a hash from before ADDED_KEYS
            before = {k: v for k, v in other.key.items() if k not in ADDED_KEYS}
            at_defaults = all(
                other.key.get(k) == _default_key(config, k, other.key.get(k)) for k in ADDED_KEYS
            )
            if at_defaults and _sha256(before) == self.config_sha256:
                return ""
        return "?"


def identity_key(config: ExperimentConfig) -> dict:
    """The study key the identity hashes: ExperimentConfig.study_key without epochs (a
    study trained longer is the same study), plus the seeds, and a user model by its name
    in the file (its content is model_sha256), not by how its path was written."""
    key = config.study_key()
    key.pop("epochs")
    key["seeds"] = list(config.seeds)
    if config.model_sha256:  # ./net.py and ../x/net.py are the same model
        key["model"] = config.model.rpartition(":")[2]
    return key


def _sha256(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _default_key(config: ExperimentConfig | None, name: str, fallback: object) -> object:
    """Study-key entry `name` of `config` with option `name` at its default: what a study
    made before the option existed had."""
    if config is None:
        return fallback
    defaults = {f.name: f.default for f in fields(config)}
    if name not in defaults:
        return fallback
    key = identity_key(replace(config, **{name: defaults[name]}))
    return json.loads(json.dumps(key, sort_keys=True, default=str)).get(name, fallback)


def _seeds(seeds: tuple[int, ...]) -> str:
    return ", ".join(map(str, seeds)) or "none"


@dataclass
class Checkpoint:
    """The content of checkpoint.pt (see the module docstring).

    `engine` is the state `actlab.engine.trainer.train` continues from, or for a Ray run
    ``{"shards": {"seeds": [[...], ...], "states": [...]}}``; `rows` the CSV records of
    every complete epoch, by file name; `identity` None only in a version 1 checkpoint."""

    depth_index: int
    depth: int | None
    epoch: int
    engine: dict
    identity: StudyIdentity | None
    rows: dict[str, list[list[str]]] | None = None
    version: int = CHECKPOINT_VERSION
    extra: dict = field(default_factory=dict)  # unknown keys of a newer writer, kept

    @property
    def sharded(self) -> bool:
        """Whether it was written by a Ray run (one engine state per shard)."""
        return "shards" in self.engine

    def finished(self, config: ExperimentConfig) -> bool:
        """Whether it is the last epoch of the last depth of `config`."""
        last = len(config.depth_list) - 1
        return self.depth_index == last and self.epoch == config.epochs

    def to_document(self) -> dict:
        """The dict torch.save writes (tensors inside `engine`, plain types elsewhere)."""
        return {
            **self.extra,
            "schema": self.version,
            "depth_index": self.depth_index,
            "depth": self.depth,
            "epoch": self.epoch,
            "engine": self.engine,
            "identity": None if self.identity is None else self.identity.to_dict(),
            "rows": self.rows,
        }

    @classmethod
    def from_document(cls, document: object, path: Path) -> Checkpoint:
        """A checkpoint from what torch.load returned; RunDirError (one line) when it is
        not one actlab wrote or is damaged."""
        fix = "delete it to restart the run, or restore it"
        if not isinstance(document, dict):
            raise RunDirError(f"{path} is not an actlab checkpoint; {fix}")
        missing = [k for k in ("depth_index", "epoch", "engine") if k not in document]
        if missing:
            raise RunDirError(
                f"{path} lacks {', '.join(missing)}; it was not written by actlab compare: {fix}"
            )
        depth_index, epoch, engine = (document[k] for k in ("depth_index", "epoch", "engine"))
        if not isinstance(epoch, int) or not isinstance(depth_index, int) or epoch < 0:
            raise RunDirError(f"{path} holds no valid epoch or depth; {fix}")
        if not isinstance(engine, dict) or not _valid_shards(engine):
            raise RunDirError(f"{path} holds a malformed engine state; {fix}")
        rows = document.get("rows")
        if rows is not None and not (
            isinstance(rows, dict)
            and all(
                isinstance(v, list) and all(isinstance(r, list) for r in v) for v in rows.values()
            )
        ):
            raise RunDirError(f"{path} holds a damaged copy of the rows; {fix}")
        identity = StudyIdentity.from_dict(document.get("identity"))
        if document.get("identity") is not None and identity is None:
            raise RunDirError(f"{path} holds a damaged study identity; {fix}")
        known = {"schema", "depth_index", "depth", "epoch", "engine", "identity", "rows"}
        return cls(
            depth_index=depth_index,
            depth=document.get("depth"),
            epoch=epoch,
            engine=engine,
            identity=identity,
            rows=None
            if rows is None
            else {k: [list(map(str, r)) for r in v] for k, v in rows.items()},
            version=int(document.get("schema", 1))
            if isinstance(document.get("schema"), int)
            else 1,
            extra={k: v for k, v in document.items() if k not in known},
        )

    def check_belongs_to(self, config: ExperimentConfig, dataset: dict, path: Path) -> None:
        """Refuse a checkpoint of another study, data or model source (RunDirError), and
        one whose position lies outside `config` (a depth it lacks, more epochs)."""
        if not 0 <= self.depth_index < len(config.depth_list) or self.epoch > config.epochs:
            raise RunDirError(
                f"{path} is at epoch {self.epoch} of depth index {self.depth_index}, outside "
                f"this study ({config.epochs} epochs, depths {list(config.depth_list)}); it "
                "belongs to another study: delete it or restore this study's own checkpoint"
            )
        if self.identity is None:  # version 1: no identity to compare
            return
        here = StudyIdentity.of(config, dataset)
        differing = self.identity.differences(here, config)
        if differing:
            raise RunDirError(
                f"{path} belongs to another study ({'; '.join(differing)}); restore this "
                "study's own checkpoint, or choose another --out"
            )


def _valid_shards(engine: dict) -> bool:
    """A Ray engine block, if it is one, has as many seed lists as states."""
    if "shards" not in engine:
        return True
    shards = engine["shards"]
    if not isinstance(shards, dict):
        return False
    seeds, states = shards.get("seeds"), shards.get("states")
    return (
        isinstance(seeds, list)
        and isinstance(states, list)
        and len(seeds) == len(states) > 0
        and all(isinstance(s, list) and all(isinstance(x, int) for x in s) for s in seeds)
    )


def load_checkpoint(path: Path, *, mmap: bool = False) -> Checkpoint | None:
    """checkpoint.pt at `path`, or None when there is none. `mmap` maps the tensors
    instead of reading them (a reader that needs the rows and the identity only)."""
    import torch

    if not path.exists():
        return None
    if not path.is_file():
        raise RunDirError(
            f"{path} is not a file; remove it to restart the run, or choose another --out"
        )
    try:
        document = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError:
        raise
    except Exception as error:  # a corrupt file: the atomic rename makes this unlikely
        raise RunDirError(
            f"{path} is corrupt ({type(error).__name__}); delete it to restart the run"
        ) from None
    return Checkpoint.from_document(document, path)
