"""argparse types for numeric flags that refuse out-of-range values, so that `--iters 0` or
`--hfov 0` is argparse's one-line usage error (`amt VERB: error: argument --hfov: ...`, exit 2)
and never a traceback or a silently odd run. This module imports nothing from amt."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {low}")
        return value

    return parse


def float_in(
    low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
) -> Callable[[str], float]:
    """A finite number in [low, high] ((low, ...] with open_low, [..., high) with open_high)."""
    interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high or math.isinf(high) else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value > low if open_low else value >= low)
        ok = ok and (value < high if open_high else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number in {interval}")
        return value

    return parse
