"""Source columns -> canonical values: ids, order keys, ratings and item text.

Every value arrives as read (mostly text); a bad one raises one
:class:`~llmrec.errors.DataError` with the file, the column, the line and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.errors import DataError

RATING_RANGE = (0.0, 100.0)
"""Plausible ratings, bounds included: generous enough for 0-5 stars, 1-10 scores and
0-100 percentages; a value outside it (a Unix timestamp, -1, ``inf``, ``nan``) means a
column was mapped wrongly, and is refused with the column named."""


def _ids(values: pd.Series, path: Path, column: str, first_line: int = 2) -> pd.Series:
    """Ids as strings; a missing id raises with its line number."""
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError(f"missing id at line {row + first_line}", file=str(path), column=column)
    if pd.api.types.is_float_dtype(values) and bool((values % 1 == 0).all()):
        values = values.astype(np.int64)
    return values.astype(str).reset_index(drop=True)


def _order_key(values: pd.Series, path: Path, column: str, first_line: int = 2) -> np.ndarray:
    """Timestamps/steps as int64: numbers, or datetimes (-> Unix seconds); else the first bad value raises."""
    if pd.api.types.is_datetime64_any_dtype(values):
        if values.isna().any():
            row = int(np.argmax(values.isna().to_numpy()))
            raise DataError(f"missing timestamp at line {row + first_line}", file=str(path), column=column)
        stamps = pd.to_datetime(values, utc=True)
        return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raw = values.iloc[row]
        what = "missing" if pd.isna(raw) else "non-numeric"
        raise DataError(
            f"{what} timestamp at line {row + first_line}",
            file=str(path),
            column=column,
            value=None if pd.isna(raw) else raw,
            hint="timestamps must be numbers (Unix time or step); convert dates first, "
            "or store them as a Parquet datetime column",
        )
    if pd.api.types.is_integer_dtype(numbers):
        return numbers.to_numpy(dtype=np.int64)
    return np.floor(numbers.to_numpy(dtype=np.float64)).astype(np.int64)


def _ratings(values: pd.Series, path: Path, column: str, first_line: int = 2) -> np.ndarray:
    """Ratings as float32; missing cells give NaN; a non-number or a value outside
    :data:`RATING_RANGE` (``nan``, ``inf`` and negative values included) raises."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = (numbers.isna() & values.notna()).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"non-numeric rating at line {row + first_line}",
            file=str(path),
            column=column,
            value=values.iloc[row],
            hint="ratings must be numbers; leave the cell empty when there is none",
        )
    low, high = RATING_RANGE
    floats = numbers.to_numpy(dtype=np.float64)
    outside = ~np.isnan(floats) & ~((floats >= low) & (floats <= high))
    if outside.any():
        row = int(np.argmax(outside))
        raise DataError(
            f"rating outside the plausible range [{low:g}, {high:g}] at line {row + first_line} "
            f"({int(outside.sum())} such rows)",
            file=str(path),
            column=column,
            value=values.iloc[row],
            hint="check the column order/mapping: is this column the rating? "
            "(a Unix timestamp here means two columns are swapped)",
        )
    return floats.astype(np.float32)


def _text(value: Any) -> str:
    """Flatten a cell (None, str, number or nested list) into one space-separated string."""
    if isinstance(value, list | tuple | np.ndarray):
        return " ".join(t for t in (_text(v) for v in value) if t)
    if value is None or pd.isna(value):
        return ""
    return str(value).strip()


def _join_text(columns: Sequence[pd.Series | list[Any]], n: int) -> list[str]:
    """Row-wise join of several text columns, skipping empty pieces."""
    if not columns:
        return [""] * n
    rows = zip(*[list(c) for c in columns], strict=True)
    return [" ".join(p for p in (_text(v) for v in row) if p) for row in rows]
