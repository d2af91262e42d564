"""The only reader and writer of run directories (see docs/run-directory.md, schema 1).

Two sections, kept apart on purpose: writing (used by the engine's caller while a study
runs: lock, config, append-only CSVs, atomic checkpoints) and reading (used by the report:
a run directory alone is enough to rebuild everything).
"""

from __future__ import annotations

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


# === reading ==============================================================================
