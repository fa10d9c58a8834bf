"""Cleaning: dedupe, drop items without a catalog row or title, rating threshold, iterative k-core.

Every step appends one line with its counts to ``RecDataset.log`` (and logs it),
so nothing is dropped silently. The steps run in this order:

1. ``dedupe``: one interaction per (user, item), the earliest by the order key;
2. interactions whose item has no catalog row are dropped (with a
   :class:`~llmrec.errors.LlmrecWarning`, since the source data disagrees with itself);
3. ``drop_untitled``: interactions whose item has an empty title;
4. ``min_rating``: keep ``rating >= min_rating`` (rows without a rating go);
5. ``k_core``: repeatedly drop users and items with fewer than ``k`` interactions
   until every user and item has at least ``k``.

The catalog keeps the items that still have interactions.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import datasets
import numpy as np
import pandas as pd

from llmrec.data.schema import INTERACTION_FEATURES, ITEM_FEATURES, RecDataset
from llmrec.errors import ConfigError, DataError, LlmrecWarning

logger = logging.getLogger(__name__)


@dataclass
class CleaningConfig:
    """What :func:`clean` does; the defaults are the LlamaRec protocol (5-core, untitled items dropped)."""

    k_core: int = 5
    """Minimum interactions per user and per item, applied iteratively; 0 disables."""
    min_rating: float | None = None
    """Keep only interactions with ``rating >= min_rating``; ``None`` keeps all."""
    drop_untitled: bool = True
    """Drop interactions whose item has an empty title."""
    dedupe: bool = True
    """Keep only the earliest interaction of each (user, item) pair."""

    def __post_init__(self) -> None:
        if isinstance(self.k_core, bool) or not isinstance(self.k_core, int | np.integer) or self.k_core < 0:
            raise ConfigError(
                "must be an integer >= 0 (0 disables the k-core filter)",
                parameter="k_core",
                value=self.k_core,
            )
        if self.min_rating is not None and not (
            isinstance(self.min_rating, int | float) and math.isfinite(self.min_rating)
        ):
            raise ConfigError(
                "must be a finite number or None", parameter="min_rating", value=self.min_rating
            )


def _log(log: list[str], line: str) -> None:
    log.append(line)
    logger.info(line)


def _dedupe(inter: pd.DataFrame, order_by: str, log: list[str]) -> pd.DataFrame:
    """Keep the earliest interaction of each (user, item); ties keep the first row."""
    order = np.argsort(inter["timestamp"].to_numpy(), kind="stable")
    dup_sorted = inter.iloc[order].duplicated(["user_id", "item_id"], keep="first").to_numpy()
    dup = np.empty(len(inter), dtype=bool)
    dup[order] = dup_sorted
    _log(
        log,
        f"dedupe: dropped {int(dup.sum())} repeated (user, item) interactions "
        f"(kept the earliest by {order_by})",
    )
    return inter[~dup]


def _drop_unknown_items(inter: pd.DataFrame, items: pd.DataFrame, log: list[str]) -> pd.DataFrame:
    """Drop interactions whose item has no catalog row (warns when there are any)."""
    known = inter["item_id"].isin(pd.Index(items["item_id"])).to_numpy()
    dropped = inter.loc[~known, "item_id"]
    line = f"catalog: dropped {len(dropped)} interactions of {dropped.nunique()} item ids with no catalog row"
    if len(dropped):
        line += f" (e.g. {dropped.iloc[0]!r})"
        warnings.warn(line, LlmrecWarning, stacklevel=3)
    _log(log, line)
    return inter[known]


def _drop_untitled(inter: pd.DataFrame, items: pd.DataFrame, log: list[str]) -> pd.DataFrame:
    """Drop interactions whose item's title is empty (or blank)."""
    untitled = items.loc[items["title"].fillna("").str.strip() == "", "item_id"]
    drop = inter["item_id"].isin(pd.Index(untitled)).to_numpy()
    n_items = inter.loc[drop, "item_id"].nunique()
    _log(log, f"untitled: dropped {int(drop.sum())} interactions of {n_items} items with an empty title")
    return inter[~drop]


def _min_rating(inter: pd.DataFrame, min_rating: float, log: list[str]) -> pd.DataFrame:
    """Keep ``rating >= min_rating``; interactions without a rating are dropped and counted apart."""
    ratings = inter["rating"].to_numpy(dtype=np.float64)
    missing = np.isnan(ratings)
    if len(ratings) and missing.all():
        raise DataError(
            f"min_rating={min_rating} is set but the data has no ratings",
            column="rating",
            hint="set min_rating to None for implicit-feedback data",
        )
    keep = ~missing & (ratings >= min_rating)
    _log(
        log,
        f"min_rating: dropped {int((~keep).sum())} interactions with rating < {min_rating:g} "
        f"({int(missing.sum())} of them without a rating)",
    )
    return inter[keep]


def k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Rows kept by the iterative ``k``-core filter, and the number of passes it took.

    ``users`` and ``items`` are equal-length arrays of ids (any hashable type).
    After filtering, every kept user and every kept item has at least ``k`` kept rows.
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or not len(users):
        return keep, 0
    u_codes, _ = pd.factorize(users)
    i_codes, _ = pd.factorize(items)
    rounds = 0
    while True:
        u_count = np.bincount(u_codes[keep], minlength=u_codes.max() + 1)
        i_count = np.bincount(i_codes[keep], minlength=i_codes.max() + 1)
        new = keep & (u_count[u_codes] >= k) & (i_count[i_codes] >= k)
        rounds += 1
        if new.sum() == keep.sum():
            return keep, rounds
        keep = new


def _k_core(inter: pd.DataFrame, k: int, log: list[str]) -> pd.DataFrame:
    keep, rounds = k_core_mask(inter["user_id"].to_numpy(), inter["item_id"].to_numpy(), k)
    out = inter[keep]
    _log(
        log,
        f"{k}-core: dropped {int((~keep).sum())} interactions in {rounds} passes; "
        f"{out['user_id'].nunique()} users, {out['item_id'].nunique()} items, {len(out)} interactions remain",
    )
    return out


def _nonempty(inter: pd.DataFrame, step: str, data: RecDataset, log: list[str]) -> pd.DataFrame:
    if inter.empty:
        raise DataError(
            f"no interactions left after the {step} step of cleaning",
            file=data.source or data.name,
            hint=f"loosen CleaningConfig (e.g. lower k_core or min_rating); last log line: {log[-1]}",
        )
    return inter


def clean(data: RecDataset, config: CleaningConfig | None = None) -> RecDataset:
    """Return a cleaned copy of ``data`` (see the module doc for the steps); every drop is counted in ``log``.

    Raises :class:`~llmrec.errors.DataError` when nothing is left, naming the step that emptied it.
    """
    config = config or CleaningConfig()
    log = list(data.log)
    inter = data.interactions.to_pandas()
    items = data.items.to_pandas()
    if config.dedupe:
        inter = _nonempty(_dedupe(inter, data.order_by, log), "dedupe", data, log)
    inter = _nonempty(_drop_unknown_items(inter, items, log), "catalog", data, log)
    if config.drop_untitled:
        inter = _nonempty(_drop_untitled(inter, items, log), "drop_untitled", data, log)
    if config.min_rating is not None:
        inter = _nonempty(_min_rating(inter, config.min_rating, log), "min_rating", data, log)
    if config.k_core > 0:
        inter = _nonempty(_k_core(inter, config.k_core, log), "k_core", data, log)
    inter = inter.reset_index(drop=True)
    used = items["item_id"].isin(pd.Index(inter["item_id"])).to_numpy()
    items = items[used].drop_duplicates("item_id").reset_index(drop=True)
    _log(log, f"catalog: kept {len(items)} of {len(used)} items (those with interactions)")
    return RecDataset(
        name=data.name,
        interactions=datasets.Dataset.from_pandas(inter, features=INTERACTION_FEATURES, preserve_index=False),
        items=datasets.Dataset.from_pandas(items, features=ITEM_FEATURES, preserve_index=False),
        order_by=data.order_by,
        source=data.source,
        log=log,
    )
