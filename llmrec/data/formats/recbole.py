"""RecBole atomic files: ``NAME.inter`` + ``NAME.item``, tab-separated with ``name:type`` headers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.formats.canonical import _finish, _interactions, _items
from llmrec.data.formats.reading import (
    _check_columns,
    _check_rows,
    _folder,
    _guess_separator,
    _read_text_table,
    _separator_hint,
)
from llmrec.data.formats.values import _ids, _join_text, _order_key, _ratings
from llmrec.data.schema import RecDataset
from llmrec.errors import DataError

RECBOLE_TITLE_FIELDS = ("title", "movie_title", "item_title", "name")
"""Item-file fields RecBole datasets use for the title (the first present wins)."""


def _read_recbole(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A RecBole atomic file: tab-separated, header ``name:type``; returns (frame, name -> type)."""
    frame = _read_text_table(path, "\t", quoting=csv.QUOTE_NONE)
    types: dict[str, str] = {}
    for column in frame.columns:
        col_name, sep, kind = str(column).rpartition(":")
        if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
            guess = _guess_separator(str(column), "\t")
            raise DataError(
                "RecBole header fields must be 'name:type' (type token, token_seq, float or float_seq)",
                file=str(path),
                column=str(column),
                value=str(column),
                hint=_separator_hint(str(column), "\t") if guess else "e.g. 'user_id:token'",
            )
        types[col_name] = kind
    frame.columns = list(types)
    return frame, types


def load_recbole(path: str | Path, *, name: str | None = None, domain: str | None = None) -> RecDataset:
    """RecBole atomic files in a folder: ``NAME.inter`` + ``NAME.item`` (NAME = folder name by default).

    ``.inter`` needs ``user_id`` and ``item_id``; ``rating`` and ``timestamp`` are
    optional (without a timestamp the row order is the step). ``.item`` needs
    ``item_id`` and a title field (one of :data:`RECBOLE_TITLE_FIELDS`); its other
    token / token_seq fields (genre, categories, brand, ...) become the item ``text``.
    """
    root = _folder(path)
    name = name or root.name
    ifile = root / f"{name}.inter"
    if not ifile.is_file():
        found = sorted(root.glob("*.inter"))
        ifile = found[0] if len(found) == 1 else ifile
    inter_raw, inter_types = _read_recbole(ifile)
    _check_columns(inter_raw, ["user_id", "item_id"], ifile, "\t")
    _check_rows(inter_raw, ifile)
    item_file = ifile.with_suffix(".item")
    items_raw, item_types = _read_recbole(item_file)
    title = next((f for f in RECBOLE_TITLE_FIELDS if f in items_raw.columns), None)
    _check_columns(items_raw, ["item_id", title or "title"], item_file, "\t")
    _check_rows(items_raw, item_file)
    domain = domain or name
    has_time = "timestamp" in inter_types
    inter = _interactions(
        _ids(inter_raw["user_id"], ifile, "user_id"),
        _ids(inter_raw["item_id"], ifile, "item_id"),
        _order_key(inter_raw["timestamp"], ifile, "timestamp") if has_time else np.arange(len(inter_raw)),
        _ratings(inter_raw["rating"], ifile, "rating") if "rating" in inter_types else None,
        domain,
    )
    text_cols = [
        c for c, kind in item_types.items() if c not in ("item_id", title) and kind in ("token", "token_seq")
    ]
    items = _items(
        _ids(items_raw["item_id"], item_file, "item_id"),
        items_raw[title],
        _join_text([items_raw[c] for c in text_cols], len(items_raw)),
        domain,
    )
    log = [] if has_time else [f"{ifile.name} has no timestamp field: the row order is the step"]
    return _finish(
        name,
        inter,
        items,
        order_by="timestamp" if has_time else "step",
        source=str(root),
        inter_file=ifile,
        item_column="item_id",
        log=log,
    )
