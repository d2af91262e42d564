"""TensorBoard and MLflow exports of a study: live during `compare --log`, or after the fact
from a run directory alone (`actlab export`).

The run directory stays the source of truth. Both exports are fed its rows (metrics.csv and
diagnostics.csv, as dicts keyed by `store`'s column names) and skip what their target already
holds, so exporting a run twice, or a study resumed after a crash, writes each epoch once.

Names, shared by both tools:

- a scalar per numeric metrics.csv column (``train_loss``, ``test_acc``, ``epoch_time_s``,
  ...), ``diverged`` (1 on the epoch a member diverged, else 0; the ``status`` column), and
  a scalar per diagnostics.csv column and layer (``grad_norm/layer1``, ``dead_frac/layer2``,
  ...), at step = epoch; empty cells are not exported;
- TensorBoard: one run per member, ``<study>/<activation>[/depth=<d>]/lr=<lr>/seed=<seed>``
  (``<study>`` is the run directory's name), with an HParams session (activation, lr, seed,
  depth, model, dataset, ...) whose metrics are ``hparams/final_test_acc``, ... : tags that
  differ from the per-epoch scalars, written once the member's last epoch is known;
- MLflow: one parent run per study (its config as params; config.json, report.html and
  report.md as artifacts) in the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default
  "actlab"), and one nested child run per member (params, tags ``activation``, ``lr``,
  ``seed``, ``depth`` for ``mlflow.search_runs``, metrics with ``step=epoch``).

A study is identified by ``actlab.study_id``: a hash of its config.json (creation time and
study, without the epoch count), so moving the run directory does not duplicate its MLflow
runs (TensorBoard runs are named after the directory), while a new study in a reused
directory is a new one.

Live logging (`LiveLog`) runs each export on a background thread: training never waits for
a slow tracking server, and a failing target warns once and is dropped (the run directory is
complete either way; `actlab export` adds the rest later).

This module opens the targets by kind and exports a run directory (`export_run`); the parts
live in: actlab.export.rows (what is exported), actlab.export.base (the target base class),
actlab.export.tensorboard, actlab.export.mlflow and actlab.export.live (`LiveLog`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from actlab.errors import ActlabError, ExportError
from actlab.export.base import ExportTarget, one_line
from actlab.export.mlflow import MlflowTarget
from actlab.export.rows import StudyRows, run_rows, study_of
from actlab.export.tensorboard import DEFAULT_TENSORBOARD_DIR, TensorBoardTarget
from actlab.study import store


def require(kind: str) -> None:
    """Fail with the pip line that installs a missing export package (cheap: no import)."""
    import importlib.util

    module = {"tensorboard": "tensorboard", "mlflow": "mlflow"}[kind]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules
        found = False
    if not found:
        raise ExportError(
            f"the {kind} export needs the {module} package; "
            f"pip install 'actlab[{kind}]' (or pip install {module})"
        )


def open_target(kind: str, where: str = "") -> ExportTarget:
    """A TensorBoard log directory ("" for runs/tb) or an MLflow tracking URI ("" for
    $MLFLOW_TRACKING_URI, else MLflow's default)."""
    require(kind)
    if kind == "tensorboard":
        return TensorBoardTarget(where or DEFAULT_TENSORBOARD_DIR)
    return MlflowTarget(where or None)


def export_run(run_dir: str | Path, targets: dict[str, str]) -> list[str]:
    """Export everything in a run directory that the targets ({"tensorboard": DIR,
    "mlflow": URI}) do not hold yet; returns one line per target saying where it went."""
    if not targets:
        raise ExportError("nothing to export to; add --tensorboard DIR and/or --mlflow [URI]")
    for kind in targets:
        require(kind)
    run = store.read_run(run_dir)
    study = study_of(run)
    rows = StudyRows(study)
    batch = rows.batch(*run_rows(run))
    lines = []
    for kind, where in targets.items():
        target = None
        try:
            target = open_target(kind, where)
            target.write(study, batch)
            target.finish(study, rows.is_complete())
        except (ActlabError, OSError):  # OSError: the CLI names the path and the way out
            raise
        except Exception as error:
            name = target.describe() if target is not None else f"{kind} {where}".strip()
            raise ExportError(f"exporting {run_dir} to {name} failed: {one_line(error)}") from None
        lines.append(f"{kind}: {target.where(study)}, {target.written} values written")
    return lines


def parse_log_specs(specs: Sequence[str]) -> dict[str, str]:
    """``--log`` values: ``tensorboard[=DIR]`` and ``mlflow[=URI]``, repeated or joined by
    commas; returns {"tensorboard": DIR or "", "mlflow": URI or ""}. Checks that the
    packages are installed (before any training)."""
    chosen: dict[str, str] = {}
    for spec in specs:
        for part in spec.split(","):
            if not part.strip():
                continue
            kind, _, where = part.strip().partition("=")
            if kind not in ("tensorboard", "mlflow"):
                raise ExportError(
                    f"--log {part!r}: unknown log target; use tensorboard[=DIR] or mlflow[=URI]"
                )
            require(kind)
            chosen[kind] = where
    if not chosen:
        raise ExportError("--log needs a target: tensorboard[=DIR] or mlflow[=URI]")
    return chosen
