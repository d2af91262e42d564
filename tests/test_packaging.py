"""Packaging: one version string, and a torch floor that the suite actually runs on."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version

import actlab

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once_and_read_by_the_build():
    project = PYPROJECT["project"]
    assert "version" not in project, "a second version string in pyproject.toml"
    assert "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "actlab.__version__"}
    assert Version(actlab.__version__)  # a valid version
    # setuptools' own reader of `attr:` versions (static, from the source) finds it...
    from setuptools.config.expand import read_attr

    assert read_attr("actlab.__version__", root_dir=ROOT) == actlab.__version__
    # ...and this installation's metadata, built from pyproject.toml, says the same.
    assert importlib.metadata.version("actlab") == actlab.__version__


@pytest.mark.slow
def test_the_wheel_metadata_reports_the_package_version(tmp_path):
    """What a wheel would carry: setuptools' own metadata hook on this source tree (needs
    the setuptools that pyproject.toml's build-system asks for; .ci/run builds the wheel)."""
    import setuptools

    if Version(setuptools.__version__) < Version("77"):
        pytest.skip(f"setuptools {setuptools.__version__} here; the build needs >= 77")
    script = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    folder = tmp_path / done.stdout.strip().splitlines()[-1]
    metadata = (folder / "METADATA").read_text()
    assert re.search(rf"^Version: {re.escape(actlab.__version__)}$", metadata, re.M)
    assert re.search(r"^Requires-Dist: torch>=", metadata, re.M)


def test_the_torch_floor_is_the_torch_the_suite_runs_on():
    """actlab calls torch._fused_adam_ (private) and torch.func; a floor below the tested
    torch promises what no test has seen. Raising torch in CI means raising the floor (or
    adding the floor's torch to CI)."""
    (floor,) = [
        re.fullmatch(r"torch>=([\w.]+)", dep).group(1)
        for dep in PYPROJECT["project"]["dependencies"]
        if dep.startswith("torch")
    ]
    tested = Version(torch.__version__.split("+")[0])
    assert Version(floor).release[:2] == tested.release[:2], (floor, str(tested))
