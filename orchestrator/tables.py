"""One number formatter and one Markdown table for every table the project prints or writes (compare, the sweep's
final table, the NAS report, the benchmarks, the repro summaries), so the same number reads the same everywhere."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd


def fmt_number(value: Any) -> str:
    """None and NaN -> ""; a float of magnitude >= 1000 without decimals (12346); other floats to 4 significant
    digits (0.1235, 1.5e-05); integers (also numpy's) and everything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return ""
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    try:
        if pd.isna(value):  # pd.NA, pd.NaT
            return ""
    except (TypeError, ValueError):  # containers: not missing
        pass
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def markdown_table(data: pd.DataFrame | Iterable[Sequence[Any]], columns: Sequence[str] | None = None,
                   fmt: Callable[[Any], str] = fmt_number) -> str:
    """A GitHub Markdown table of a DataFrame (its ``columns``, all by default) or of row sequences (``columns``
    required), every cell through ``fmt``. Columns whose values are all numbers align right, the others left."""
    if isinstance(data, pd.DataFrame):
        columns = list(data.columns) if columns is None else list(columns)
        rows = [list(row) for row in data[columns].itertuples(index=False)]
    else:
        if columns is None:
            raise ValueError("markdown_table of rows needs the column names")
        columns = list(columns)
        rows = [list(row) for row in data]
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"row {row!r} has {len(row)} cells for {len(columns)} columns")

    def cell(value: Any) -> str:
        return fmt(value).replace("|", "\\|").replace("\n", " ")

    numeric = [any(_is_number(r[i]) for r in rows) and all(_is_number(r[i]) or fmt(r[i]) == "" for r in rows)
               for i in range(len(columns))]
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
