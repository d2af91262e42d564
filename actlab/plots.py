"""Matplotlib figures. Every function returns a Figure and never opens a window;
`save_figure` writes PNG or SVG by the file's suffix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # never open a window, also when a display is present

# === activation curves (catalog) ==========================================================


# === training curves, statistics, diagnostics (report) ====================================
