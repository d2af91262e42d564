"""Shared test fixtures. Tests use small generated data; `realdata` tests read the Debian
Fashion-MNIST package when it is installed."""

import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("KERAS_BACKEND", "torch")
