"""engine/allocator.py: glibc's malloc told to keep freed memory, once per process."""

import platform
import subprocess
import sys

import pytest

from actlab.engine import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_glibc_takes_both_thresholds_and_a_second_call_is_a_no_op():
    """In a fresh process (the setting is process-wide): the mallopt calls succeed."""
    script = (
        "from actlab.engine import allocator as a\n"
        "print(a.retain_freed_memory(), a._done, a.retain_freed_memory())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["True", "True", "True"]


def test_elsewhere_it_does_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.retain_freed_memory() is False
    assert allocator._done is False
