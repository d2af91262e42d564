"""What is exported, as pure functions of a run directory's rows: the `Study` a run
directory is (its name and id), each member's epochs as named scalars (`MemberEpoch`), the
final metrics an HParams session or an MLflow run is linked to, the member's hyperparameters,
and `StudyRows`, which turns row batches into export `Batch`es. Imports no export package.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from actlab.config import ExperimentConfig
from actlab.study import store

# The columns that name a row; every other column is a number exported as a scalar (and
# `status` becomes `diverged`).
ROW_NAMES = ("depth", "member", "activation", "seed", "lr", "epoch", "layer", "status")


METRIC_SCALARS = tuple(c for c in store.METRICS_COLUMNS if c not in ROW_NAMES)


DIAGNOSTIC_SCALARS = tuple(c for c in store.DIAGNOSTICS_COLUMNS if c not in ROW_NAMES)


MemberKey = tuple  # (depth or None, activation, lr, seed)


@dataclass(frozen=True)
class Study:
    """A run directory as the exports see it."""

    name: str  # the run directory's name: the top of the TensorBoard run names
    study_id: str
    path: Path
    config: ExperimentConfig
    dataset: dict

    @property
    def epochs(self) -> int:
        return self.config.epochs


@dataclass
class MemberEpoch:
    """One member's scalars of one epoch (metrics.csv row + its diagnostics.csv rows)."""

    member: MemberKey
    epoch: int
    status: str
    scalars: dict[str, float]


@dataclass
class Batch:
    """What one export call writes: member epochs, and the members that are finished."""

    epochs: list[MemberEpoch] = field(default_factory=list)
    # A finished member: (its last epoch, its final metrics; see `final_metrics`).
    finals: dict[MemberKey, tuple[int, dict[str, float]]] = field(default_factory=dict)

    def by_member(self) -> dict[MemberKey, list[MemberEpoch]]:
        """Each member's epochs in this batch, in order of first appearance; a member with
        only a final (its last epoch written before) gets an empty list, after the others."""
        grouped: dict[MemberKey, list[MemberEpoch]] = {}
        for item in self.epochs:
            grouped.setdefault(item.member, []).append(item)
        for key in self.finals:
            grouped.setdefault(key, [])
        return grouped


def study_of(run: store.RunData) -> Study:
    """The Study of a run directory read by `store.read_run`."""
    key = run.config.study_key()
    key.pop("epochs", None)  # a study continued with more epochs is the same study
    identity = {"created": run.created, "study": key, "seeds": list(run.config.seeds)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Study(
        name=run.path.resolve().name,
        study_id=digest[:16],
        path=run.path,
        config=run.config,
        dataset=run.dataset,
    )


def member_key(row: dict) -> MemberKey:
    depth = row.get("depth")
    return (None if _empty(depth) else int(depth), str(row["activation"]), float(row["lr"]),
            int(row["seed"]))  # fmt: skip


def member_label(key: MemberKey) -> str:
    depth, activation, lr, seed = key
    label = f"{activation}|lr={lr:g}|seed={seed}"
    return label if depth is None else f"{label}|depth={depth}"


def _empty(value: object) -> bool:
    if value is None or value == "":
        return True
    try:
        return bool(value != value)  # NaN, pandas.NA
    except TypeError:  # pandas.NA in a boolean context
        return True


def member_epochs(
    metrics_rows: Iterable[dict], diagnostics_rows: Iterable[dict]
) -> list[MemberEpoch]:
    """Each metrics row with its diagnostics, as named scalars (empty cells left out)."""
    layers: dict[tuple, list[dict]] = {}
    for row in diagnostics_rows:
        layers.setdefault((member_key(row), int(row["epoch"])), []).append(row)
    result = []
    for row in metrics_rows:
        key, epoch = member_key(row), int(row["epoch"])
        status = str(row["status"])
        scalars = {name: float(row[name]) for name in METRIC_SCALARS if not _empty(row.get(name))}
        scalars["diverged"] = 1.0 if status == "diverged" else 0.0
        for layer_row in layers.get((key, epoch), []):
            layer = int(layer_row["layer"])
            for name in DIAGNOSTIC_SCALARS:
                if not _empty(layer_row.get(name)):
                    scalars[f"{name}/layer{layer}"] = float(layer_row[name])
        result.append(MemberEpoch(key, epoch, status, scalars))
    return result


def final_metrics(
    history: Sequence[MemberEpoch], with_val: bool, bpc: bool = True
) -> dict[str, float]:
    """The numbers an HParams session is linked to: the last ok epoch's test accuracy and
    loss, train loss and val accuracy (with a validation split), the best test accuracy over
    epochs, and whether the member diverged (NaN where no epoch was ok). A study without
    accuracy (a language model) also gets its final test loss in bits per character; `bpc`
    False: any other study without accuracy (a regression, whose loss is no bpc)."""
    ok = [e for e in history if e.status == "ok"]
    last = max(ok, key=lambda e: e.epoch).scalars if ok else {}
    names = ["test_acc", "test_loss", "train_loss"] + (["val_acc"] if with_val else [])
    result = {f"final_{name}": last.get(name, math.nan) for name in names}
    accuracies = [e.scalars["test_acc"] for e in ok if "test_acc" in e.scalars]
    result["best_test_acc"] = max(accuracies, default=math.nan)
    if ok and not accuracies and bpc:  # a language model: its loss in bits per character
        result["final_test_bpc"] = result["final_test_loss"] / math.log(2)
    result["diverged"] = 1.0 if any(e.status == "diverged" for e in history) else 0.0
    return result


def hparams_of(study: Study, key: MemberKey) -> dict[str, object]:
    """A member's hyperparameters for the HParams dashboard (depth: hidden layers)."""
    depth, activation, lr, seed = key
    config = study.config
    return {
        "activation": activation,
        "lr": lr,
        "seed": seed,
        "depth": depth if depth is not None else len(config.hidden),
        "model": config.model,
        "dataset": config.dataset,
    }


def varying_hparams(config: ExperimentConfig) -> set[str]:
    """The member dimensions that take several values in a study."""
    sizes = {"activation": len(config.activations), "lr": len(config.lrs),
             "seed": len(config.seeds), "depth": len(config.depth_list)}  # fmt: skip
    return {name for name, size in sizes.items() if size > 1}


def member_params(study: Study, key: MemberKey) -> dict[str, object]:
    """A member's MLflow params: its hyperparameters and the training settings."""
    config = study.config
    return {
        **hparams_of(study, key),
        "hidden": ",".join(str(h) for h in config.hidden_for(key[0])),
        "optimizer": config.optimizer,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
    }


class StudyRows:
    """Turns row batches into export Batches, keeping each member's history (for its final
    metrics: the best epoch needs every epoch, also across a resume)."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.history: dict[MemberKey, dict[int, MemberEpoch]] = {}
        self.with_val = bool(study.config.val_size)
        self.lm = study.config.task.name == "lm"  # its final test loss also in bpc

    def batch(self, metrics_rows: Iterable[dict], diagnostics_rows: Iterable[dict]) -> Batch:
        epochs = member_epochs(metrics_rows, diagnostics_rows)
        batch = Batch(epochs)
        for item in epochs:
            self.history.setdefault(item.member, {})[item.epoch] = item
        for item in epochs:
            if item.status == "diverged" or item.epoch >= self.study.epochs:
                history = sorted(self.history[item.member].values(), key=lambda e: e.epoch)
                final = final_metrics(history, self.with_val, self.lm)
                batch.finals[item.member] = (history[-1].epoch, final)
        return batch

    def is_complete(self) -> bool:
        """Every member of the study has its last epoch (or diverged)."""
        config = self.study.config
        expected = len(config.depth_list) * len(config.seeds) * len(config.activations)
        expected *= len(config.lrs)
        finished = sum(
            1
            for rows in self.history.values()
            if any(e.status == "diverged" or e.epoch >= self.study.epochs for e in rows.values())
        )
        return finished >= expected


def run_rows(run: store.RunData) -> tuple[list[dict], list[dict]]:
    """metrics.csv and diagnostics.csv rows of a read run as plain dicts."""
    metrics = run.metrics[list(store.METRICS_COLUMNS)].to_dict("records")
    diagnostics = (
        run.diagnostics[list(store.DIAGNOSTICS_COLUMNS)].to_dict("records")
        if run.diagnostics is not None
        else []
    )
    return metrics, diagnostics
