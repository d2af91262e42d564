"""Exports of a run directory to TensorBoard and MLflow, and live logging during a study.

May import: `actlab.report`, `actlab.study` and everything below them.
"""
