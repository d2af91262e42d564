"""Measured properties: the mean at a standard-normal input against quadrature, and the disk
cache that lets `actlab list` read instead of measure (keyed, so that it is never stale)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import integrate

from actlab.catalog import cache
from actlab.catalog import properties as props
from actlab.catalog.registry import get_fn, list_activations, register, unregister


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty disk cache in tmp_path and an empty memory cache, before and after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    props.clear_memory()
    yield tmp_path
    props.clear_memory()


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured although the disk cache holds the value")


@pytest.mark.parametrize("name", ["gelu", "silu", "mish", "softplus", "elu", "selu", "tanh_shrink"])
def test_mean_at_a_standard_normal_input_matches_quadrature(name):
    """E f(z), z ~ N(0, 1), against scipy's adaptive quadrature of f(x) phi(x) over the
    real line (the catalog's trapezoidal rule on its grid is good to ~1e-7; 1e-6 allowed)."""
    fn = get_fn(name)

    def integrand(x: float) -> float:
        y = fn(torch.tensor([x], dtype=torch.float64)).item()
        return y * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    expected, _ = integrate.quad(integrand, -np.inf, np.inf, points=None, epsabs=1e-10)
    assert props.properties(name)["mean_normal"] == pytest.approx(expected, abs=1e-6)


def test_exact_means_at_a_standard_normal_input():
    # E[z Phi(z)] = E[phi(z)] = 1 / (2 sqrt(pi)); SELU's constants make the mean 0 (its
    # fixed point, Klambauer et al. 2017).
    assert props.properties("gelu")["mean_normal"] == pytest.approx(
        0.5 / math.sqrt(math.pi), abs=1e-6
    )
    assert props.properties("selu")["mean_normal"] == pytest.approx(0.0, abs=1e-6)
    assert props.properties("softsign")["mean_normal"] == 0.0  # odd


def test_list_reads_the_disk_cache_instead_of_measuring(isolated_cache, monkeypatch):
    from actlab.cli.catalog_text import format_table

    first = format_table()
    path = props.cache_path()
    assert path.is_file() and path.parent == isolated_cache / "actlab" / "catalog"
    props.clear_memory()  # a new process: only the disk remains
    monkeypatch.setattr(props, "measure", _no_measuring)
    assert format_table() == first


def test_cached_properties_equal_a_fresh_measurement_for_every_entry(isolated_cache):
    labels = [entry.example for entry in list_activations()]
    for label in labels:
        props.properties(label)
    props.clear_memory()
    for label in labels:
        cached = props.properties(label)
        fresh = props.measure(label)
        assert cached.keys() == fresh.keys(), label
        for key, value in fresh.items():
            same = (cached[key] == value) or (
                isinstance(value, float) and math.isnan(value) and math.isnan(cached[key])
            )
            assert same, (label, key, cached[key], value)
        assert isinstance(cached["range"], tuple)


def test_a_new_torch_or_catalog_source_starts_a_new_cache_file(isolated_cache, monkeypatch):
    props.properties("relu")
    before = props.cache_path()
    real_version = cache.metadata.version
    monkeypatch.setattr(
        cache.metadata,
        "version",
        lambda name: "9.9.9" if name == "torch" else real_version(name),
    )
    assert props.cache_path() != before
    props.clear_memory()
    measured = []
    real_measure = props.measure
    monkeypatch.setattr(
        props, "measure", lambda *a, **k: measured.append(a) or real_measure(*a, **k)
    )
    props.properties("relu")
    assert measured  # the old file is not read under another torch


def test_user_entries_and_replaced_entries_are_never_read_from_or_written_to_disk(isolated_cache):
    register("triple_relu", lambda x: 3 * torch.relu(x))
    try:
        assert props.properties("triple_relu")["max_slope"] == 3.0
        path = props.cache_path()
        assert not path.exists() or "triple_relu" not in path.read_text()
        unregister("triple_relu")
        register("triple_relu", lambda x: 5 * torch.relu(x))
        assert props.properties("triple_relu")["max_slope"] == 5.0  # not the remembered 3
    finally:
        unregister("triple_relu")


def test_a_corrupt_cache_file_is_measured_over(isolated_cache):
    path = props.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text('{"relu": {"range": [0, 1]}}')  # truncated record: wrong keys
    assert props.properties("relu")["range"] == (0.0, math.inf)
    path.write_text("not json")
    props.clear_memory()
    assert props.properties("relu")["monotonic"] is True


@pytest.mark.slow
def test_actlab_list_prints_from_the_cache_without_importing_torch(tmp_path):
    """The second `actlab list` of an installation reads its text from the cache: the same
    output, and torch (most of the first run's seconds) is never imported."""
    script = (
        "import sys\n"
        "from actlab.cli.main import main\n"
        "main(['list'])\n"
        "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0].stdout == runs[1].stdout and "relu" in runs[0].stdout
    assert "torch imported: True" in runs[0].stderr
    assert "torch imported: False" in runs[1].stderr
