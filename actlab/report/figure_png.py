"""A figure as PNG bytes that carry the text it shows: every string the renderer drew, with
its box in the image's pixels and, for tick labels, which axis it labels.

The layout goes in a PNG text chunk (key :data:`TEXT_LAYOUT_KEY`, JSON), so that a checker
that has only the report (scripts/check_report.py) can read what each chart says without
OCR: tick labels that show code (``$\\mathdefault{10^{0}}$``) or overlap each other. The
strings and boxes are recorded from the same draw whose pixels are written.

    {"version": 1, "width": 715, "height": 506,
     "texts": [{"text": "0.001", "tick": "x", "axes": 0, "math": false,
                "box": [70.1, 80.2, 101.9, 95.0]}, ...]}

Boxes are [x0, y0, x1, y1] in pixels from the bottom left; ``tick`` is "x", "y" or null;
``axes`` is the index in ``fig.axes`` of a tick label's axes; ``math`` says whether the
text was rendered as mathtext.
"""

from __future__ import annotations

import io
import json

from matplotlib import image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TEXT_LAYOUT_KEY = "actlab:text-layout"
LAYOUT_VERSION = 1


def png_with_text_layout(fig: Figure, dpi: int) -> bytes:
    """``fig`` drawn at ``dpi`` as PNG bytes, with its text layout in a text chunk."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    drawn: list[tuple[str, object, bool]] = []
    draw_text = renderer.draw_text

    def record(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        drawn.append((s, mtext, bool(ismath)))
        return draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = record
    try:
        canvas.draw()
    finally:
        del renderer.draw_text
    width, height = canvas.get_width_height()
    layout = {
        "version": LAYOUT_VERSION,
        "width": width,
        "height": height,
        "texts": _texts(fig, canvas.get_renderer(), drawn),
    }
    buffer = io.BytesIO()
    image.imsave(buffer, canvas.buffer_rgba(), format="png", origin="upper", dpi=dpi,
                 metadata={TEXT_LAYOUT_KEY: json.dumps(layout, separators=(",", ":"))})  # fmt: skip
    return buffer.getvalue()


def _texts(fig: Figure, renderer, drawn: list[tuple[str, object, bool]]) -> list[dict]:
    """One record per drawn string (see the module docstring)."""
    ticks: dict[int, tuple[str, int]] = {}
    for index, ax in enumerate(fig.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                for label in (tick.label1, tick.label2):
                    ticks[id(label)] = (name, index)
    texts = []
    for text, artist, math in drawn:
        if not text.strip():
            continue
        tick, axes = ticks.get(id(artist), (None, None))
        box = artist.get_window_extent(renderer) if artist is not None else None
        texts.append({
            "text": text, "tick": tick, "axes": axes, "math": math,
            "box": None if box is None else [round(float(v), 1) for v in box.extents],
        })  # fmt: skip
    return texts
