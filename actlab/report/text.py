"""Numbers as the report writes them: accuracies as percentages with two decimals, p-values,
intervals, gaps in percentage points; a missing value is an en dash. Pure functions, shared
by the verdict and the tables."""

from __future__ import annotations

import math

import pandas as pd

from actlab.report import stats


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def pct(fraction: float, digits: int = 2) -> str:
    """0.87654 -> '87.65' (percent, no sign); NaN -> '–'."""
    return "–" if _missing(fraction) else f"{100 * fraction:.{digits}f}"


def num(value: float, digits: int = 4) -> str:
    return "–" if _missing(value) else f"{value:.{digits}f}"


def pvalue(p: float) -> str:
    if _missing(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def p_is(p: float) -> str:
    """'= 0.0231' or '< 0.0001', for a sentence."""
    text = pvalue(p)
    return text if text.startswith("<") else f"= {text}"


def ci_pct(low: float, high: float) -> str:
    return "n/a (1 seed)" if _missing(low) else f"[{pct(low)}, {pct(high)}]"


def ci_num(low: float, high: float, digits: int = 4) -> str:
    return "n/a (1 seed)" if _missing(low) else f"[{num(low, digits)}, {num(high, digits)}]"


def signed_pp(diff: float) -> str:
    """+0.56 pp, -0.28 pp; a gap that rounds to zero is '0.00 pp', never '-0.00 pp'."""
    if _missing(diff):
        return "–"
    return _signed(diff) + " pp"


def _signed(fraction: float) -> str:
    """A signed difference in pp with two decimals, never '-0.00'."""
    text = f"{100 * fraction:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def _confidence(confidence: float) -> str:
    """0.99166 -> '99.2%', 0.9 -> '90%'."""
    text = f"{100 * confidence:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def lr_text(lr: float) -> str:
    return f"{lr:g}"


def _pp_short(fraction: float) -> str:
    """A gap in pp with two significant digits or so: 0.58, 3.3, 19."""
    if _missing(fraction):
        return "–"
    value = 100 * fraction
    if math.isinf(value):
        return "any"
    return f"{value:.2f}" if value < 1 else (f"{value:.1f}" if value < 10 else f"{value:.0f}")


def _seeds_text(count: float) -> str:
    if _missing(count):
        return "an unknown number of seeds"
    if math.isinf(count):
        return f"more than {stats.MAX_SEEDS} seeds"
    return f"about {int(count)} seeds"


def _depth(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _depth_title(depth: int | None) -> str:
    return "" if depth is None else f"depth {depth}"


def _rows_at(frame: pd.DataFrame, depth: int | None) -> pd.DataFrame:
    if depth is None:
        return frame[frame["depth"].isna()]
    return frame[frame["depth"].map(_depth) == depth]


def _value_text(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "–"
    return str(value)
