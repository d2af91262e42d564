"""Exports of a run directory to TensorBoard and MLflow, and live logging during a study:
rows (what is exported), base (the `ExportTarget` base class), tensorboard, mlflow, live
(`LiveLog`), targets (opening a target by kind; `export_run`).

May import: `actlab.report`, `actlab.study` and everything below them.
"""
