"""Generic tables: any interactions + items pair (CSV, TSV, gzipped or not, Parquet).

A :class:`ColumnMapping` names the source columns of the canonical fields;
:func:`infer_mapping` guesses it from common header names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.formats.canonical import _finish, _interactions, _items
from llmrec.data.formats.reading import _check_columns, _check_rows, _folder, _read_text_table, _require_file
from llmrec.data.formats.values import _ids, _join_text, _order_key, _ratings
from llmrec.data.schema import OrderBy, RecDataset
from llmrec.errors import DataError

TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".pq")


@dataclass
class ColumnMapping:
    """Which source columns hold the canonical fields (for :func:`load_tables`).

    Column names are those of the header of the interactions file (``user``,
    ``item``, ``time``, ``rating``, ``domain``) and of the items file (``item_id``,
    ``title``, ``text``, ``item_domain``).
    """

    user: str = "user_id"
    item: str = "item_id"
    time: str | None = "timestamp"
    """Order key (Unix time or step). ``None``: the row order of the file is the step."""
    rating: str | None = None
    domain: str | None = None
    """Interaction domain column; ``None``: taken from the item's domain, else the dataset's."""
    item_id: str | None = None
    """Id column of the items file; ``None``: same name as ``item``."""
    title: str = "title"
    text: list[str] = field(default_factory=list)
    """Items-file columns joined (space separated) into the item ``text``."""
    item_domain: str | None = None

    @property
    def items_key(self) -> str:
        """Name of the id column in the items file."""
        return self.item_id or self.item


def _read_any_table(path: Path) -> pd.DataFrame:
    """CSV (comma), TSV (tab) or Parquet, chosen by the file suffix."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        _require_file(path)
        try:
            return pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise DataError(f"cannot read Parquet file: {err}", file=str(path)) from err
    return _read_text_table(path, _table_separator(path))


def _table_separator(path: Path) -> str:
    return "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","


def _first_present(columns: Sequence[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in columns), None)


def infer_mapping(interaction_columns: Sequence[str], item_columns: Sequence[str]) -> ColumnMapping:
    """A :class:`ColumnMapping` from common header names (``user_id``/``userId``/``user``, ...).

    The order key is ``timestamp`` (or ``time``), else ``step``; every items
    column other than id, title and domain becomes item text.
    """
    cols, icols = list(interaction_columns), list(item_columns)
    user = _first_present(cols, ("user_id", "userId", "user", "UserID")) or "user_id"
    item = (
        _first_present(cols, ("item_id", "itemId", "item", "parent_asin", "movieId", "ItemID")) or "item_id"
    )
    time = _first_present(cols, ("timestamp", "time", "step")) or "timestamp"
    title = _first_present(icols, ("title", "name", "item_title")) or "title"
    item_domain = "domain" if "domain" in icols else None
    return ColumnMapping(
        user=user,
        item=item,
        time=time,
        rating="rating" if "rating" in cols else None,
        domain="domain" if "domain" in cols else None,
        item_id=item if item in icols else _first_present(icols, ("item_id", "id")),
        title=title,
        text=[c for c in icols if c not in (item, "item_id", title, item_domain)],
        item_domain=item_domain,
    )


def _table_domains(
    inter: pd.DataFrame,
    inter_items: pd.Series,
    items: pd.DataFrame,
    item_ids: pd.Series,
    mapping: ColumnMapping,
    default: str,
) -> tuple[pd.Series, pd.Series]:
    """(interaction domains, item domains): from their columns, else from each other, else ``default``."""
    if mapping.item_domain:
        item_dom = items[mapping.item_domain].fillna(default).astype(str).reset_index(drop=True)
    elif mapping.domain:
        doms = inter[mapping.domain].fillna(default).astype(str).to_numpy()
        first = pd.Series(doms, index=inter_items.to_numpy())
        item_dom = item_ids.map(first[~first.index.duplicated()]).fillna(default)
    else:
        item_dom = pd.Series(default, index=item_ids.index)
    if mapping.domain:
        inter_dom = inter[mapping.domain].fillna(default).astype(str).reset_index(drop=True)
    else:
        lookup = pd.Series(item_dom.to_numpy(), index=item_ids.to_numpy())
        inter_dom = inter_items.map(lookup[~lookup.index.duplicated()]).fillna(default)
    return inter_dom, item_dom


def load_tables(
    interactions: str | Path,
    items: str | Path,
    mapping: ColumnMapping | None = None,
    *,
    order_by: OrderBy | None = None,
    name: str | None = None,
    domain: str | None = None,
) -> RecDataset:
    """Any interactions + items table pair (CSV, TSV, optionally gzipped, or Parquet) with a column mapping.

    ``mapping`` defaults to :func:`infer_mapping` of the headers. ``order_by``
    defaults to ``"step"`` when the order column is named ``step`` (or there is
    none), else ``"timestamp"``. ``domain`` names the single domain of data
    without a domain column (default: the dataset name = the folder name).
    """
    ifile, tfile = Path(interactions), Path(items)
    inter_raw, items_raw = _read_any_table(ifile), _read_any_table(tfile)
    mapping = mapping or infer_mapping(list(inter_raw.columns), list(items_raw.columns))
    inter_cols = [c for c in (mapping.user, mapping.item, mapping.time, mapping.rating, mapping.domain) if c]
    _check_columns(inter_raw, inter_cols, ifile, _table_separator(ifile))
    _check_rows(inter_raw, ifile)
    item_cols = [c for c in (mapping.items_key, mapping.title, *mapping.text, mapping.item_domain) if c]
    _check_columns(items_raw, item_cols, tfile, _table_separator(tfile))
    _check_rows(items_raw, tfile)
    name = name or ifile.resolve().parent.name
    if order_by is None:
        order_by = "step" if mapping.time in (None, "step") else "timestamp"
    inter_items = _ids(inter_raw[mapping.item], ifile, mapping.item)
    item_ids = _ids(items_raw[mapping.items_key], tfile, mapping.items_key)
    inter_dom, item_dom = _table_domains(inter_raw, inter_items, items_raw, item_ids, mapping, domain or name)
    inter = _interactions(
        _ids(inter_raw[mapping.user], ifile, mapping.user),
        inter_items,
        _order_key(inter_raw[mapping.time], ifile, mapping.time)
        if mapping.time
        else np.arange(len(inter_raw)),
        _ratings(inter_raw[mapping.rating], ifile, mapping.rating) if mapping.rating else None,
        inter_dom,
    )
    items_frame = _items(
        item_ids,
        items_raw[mapping.title].reset_index(drop=True),
        _join_text([items_raw[c] for c in mapping.text], len(items_raw)),
        item_dom,
    )
    return _finish(
        name,
        inter,
        items_frame,
        order_by=order_by,
        source=str(ifile.parent) if ifile.parent == tfile.parent else f"{ifile} + {tfile}",
        inter_file=ifile,
        item_column=mapping.item,
    )


def _find_table(root: Path, stem: str) -> Path | None:
    return next((root / f"{stem}{s}" for s in TABLE_SUFFIXES if (root / f"{stem}{s}").is_file()), None)


def load_tables_folder(path: str | Path, **options: Any) -> RecDataset:
    """A folder with ``interactions`` and ``items`` tables (.csv, .tsv, .parquet; see :func:`load_tables`)."""
    root = _folder(path)
    inter, items = _find_table(root, "interactions"), _find_table(root, "items")
    if inter is None or items is None:
        missing = "interactions" if inter is None else "items"
        raise DataError(
            f"no {missing} table",
            file=str(root / f"{missing}.csv"),
            hint=f"accepted suffixes: {TABLE_SUFFIXES}",
        )
    options.setdefault("name", root.name)
    return load_tables(inter, items, **options)
