"""The canonical :class:`~llmrec.data.schema.RecDataset` tables every loader builds.

:func:`_interactions` and :func:`_items` assemble the canonical frames from parsed
columns; :func:`_finish` runs the checks every loader ends with (duplicate catalog
rows, the join of interactions to the catalog) and builds the Arrow tables;
:func:`_concat` merges several loaded datasets (e.g. one per Amazon domain).
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from llmrec.data.schema import INTERACTION_FEATURES, ITEM_FEATURES, OrderBy, RecDataset
from llmrec.errors import DataError

logger = logging.getLogger("llmrec.data.loaders")  # the logger name from before the split into formats/


def _interactions(
    user: pd.Series,
    item: pd.Series,
    timestamp: np.ndarray,
    rating: np.ndarray | None,
    domain: str | pd.Series | np.ndarray,
) -> pd.DataFrame:
    n = len(user)
    return pd.DataFrame(
        {
            "user_id": np.asarray(user, dtype=object),
            "item_id": np.asarray(item, dtype=object),
            "timestamp": np.asarray(timestamp, dtype=np.int64),
            "rating": np.full(n, np.nan, dtype=np.float32) if rating is None else rating,
            "domain": domain if isinstance(domain, str) else np.asarray(domain, dtype=object),
        }
    )


def _items(
    item: pd.Series, title: pd.Series | list[str], text: list[str], domain: str | pd.Series | np.ndarray
) -> pd.DataFrame:
    titles = pd.Series(title, dtype=object).fillna("").astype(str).str.strip()
    return pd.DataFrame(
        {
            "item_id": np.asarray(item, dtype=object),
            "title": titles.to_numpy(dtype=object),
            "text": np.asarray(text, dtype=object),
            "domain": domain if isinstance(domain, str) else np.asarray(domain, dtype=object),
        }
    )


def _log(log: list[str], line: str) -> None:
    log.append(line)
    logger.info(line)


def _finish(
    name: str,
    inter: pd.DataFrame,
    items: pd.DataFrame,
    *,
    order_by: OrderBy,
    source: str,
    inter_file: Path,
    item_column: str,
    log: list[str] | None = None,
) -> RecDataset:
    """Checks shared by every loader (duplicate catalog rows, join), then the Arrow tables."""
    log = list(log or [])
    dup = items["item_id"].duplicated()
    if dup.any():
        _log(log, f"dropped {int(dup.sum())} duplicate catalog rows (same item id; kept the first)")
        items = items[~dup.to_numpy()].reset_index(drop=True)
    known = inter["item_id"].isin(pd.Index(items["item_id"])).to_numpy()
    if not known.any():
        raise DataError(
            "no interaction item id joins the item catalog",
            file=str(inter_file),
            column=item_column,
            value=inter["item_id"].iloc[0],
            hint=f"item ids must match the catalog's ids (a catalog id: {items['item_id'].iloc[0]!r}); "
            "check that both files come from the same dataset",
        )
    if not known.all():
        unknown = inter.loc[~known, "item_id"]
        _log(
            log,
            f"{int((~known).sum())} interactions refer to {unknown.nunique()} item ids absent from "
            f"the catalog (e.g. {unknown.iloc[0]!r}); clean() drops them",
        )
    line = (
        f"loaded {len(inter)} interactions ({inter['user_id'].nunique()} users, "
        f"{inter['item_id'].nunique()} items) and {len(items)} catalog items from {source}"
    )
    log.insert(0, line)
    logger.info(line)
    return RecDataset(
        name=name,
        interactions=datasets.Dataset.from_pandas(inter, features=INTERACTION_FEATURES, preserve_index=False),
        items=datasets.Dataset.from_pandas(items, features=ITEM_FEATURES, preserve_index=False),
        order_by=order_by,
        source=source,
        log=log,
    )


def _concat(name: str, parts: list[RecDataset], *, source: str, inter_file: Path) -> RecDataset:
    """One dataset from several (e.g. one per Amazon domain)."""
    inter = pd.concat([p.interactions.to_pandas() for p in parts], ignore_index=True)
    items = pd.concat([p.items.to_pandas() for p in parts], ignore_index=True)
    log = [line for p in parts for line in p.log]
    return _finish(
        name,
        inter,
        items,
        order_by=parts[0].order_by,
        source=source,
        inter_file=inter_file,
        item_column="item_id",
        log=log,
    )
