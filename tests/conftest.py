"""Shared test fixtures. Tests use small generated data; `realdata` tests read the Debian
Fashion-MNIST package when it is installed."""

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("KERAS_BACKEND", "torch")


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waits on a shared 2-core machine (the
    results do not depend on it beyond float tolerance). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_threads():
    """Tests that let actlab choose or force a thread count give the process its count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_charts(monkeypatch):
    """Reports without their matplotlib figures, for tests about rows and words (fast)."""
    from actlab.report import render as report

    monkeypatch.setattr(report, "charts", lambda analysis: [])
    monkeypatch.setattr(report, "_activation_figure", lambda analysis: None)
