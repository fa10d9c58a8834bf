"""Cleaning on the real datasets: LlamaRec's counts, every drop counted, k-core really a k-core."""

from __future__ import annotations

import logging
import warnings

import datasets
import numpy as np
import pandas as pd
import pytest

from llmrec.data import CleaningConfig, RecDataset, clean, k_core_mask, load_dataset
from llmrec.data.schema import INTERACTION_FEATURES, ITEM_FEATURES
from llmrec.errors import ConfigError, DataError, LlmrecWarning


@pytest.fixture(scope="module")
def ml_small(ml_small_dir) -> RecDataset:
    return load_dataset(ml_small_dir)


@pytest.fixture(scope="module")
def arts_office(arts_office_dir) -> RecDataset:
    return load_dataset(arts_office_dir)


def _with(
    data: RecDataset, inter: pd.DataFrame | None = None, items: pd.DataFrame | None = None
) -> RecDataset:
    """A copy of ``data`` with some of its tables replaced (pandas frames)."""
    inter = data.interactions.to_pandas() if inter is None else inter.reset_index(drop=True)
    items = data.items.to_pandas() if items is None else items.reset_index(drop=True)
    return RecDataset(
        name=data.name,
        interactions=datasets.Dataset.from_pandas(inter, features=INTERACTION_FEATURES, preserve_index=False),
        items=datasets.Dataset.from_pandas(items, features=ITEM_FEATURES, preserve_index=False),
        order_by=data.order_by,
        source=data.source,
        log=list(data.log),
    )


def _line(log: list[str], prefix: str) -> str:
    found = [line for line in log if line.startswith(prefix)]
    assert len(found) == 1, (prefix, log)
    return found[0]


def test_ml_latest_small_llamarec_protocol(ml_small, caplog):
    with caplog.at_level(logging.INFO, logger="llmrec.data.cleaning"):
        out = clean(ml_small)
    inter = out.interactions.to_pandas()
    assert inter["user_id"].nunique() == 610
    assert inter["item_id"].nunique() == 3650
    assert len(out.items) == 3650 and set(out.items["item_id"]) == set(inter["item_id"])
    assert len(inter) == 90274
    assert inter.groupby("user_id").size().min() >= 5 and inter.groupby("item_id").size().min() >= 5
    for prefix in ("dedupe: dropped 0", "catalog: dropped 0", "untitled: dropped 0", "5-core: dropped 10562"):
        line = _line(out.log, prefix)
        assert line in caplog.text
    assert out.log[: len(ml_small.log)] == ml_small.log
    assert "catalog: kept 3650 of 9742 items" in out.log[-1]


def test_cross_domain_dedupe_keeps_domains(arts_office):
    out = clean(arts_office)
    assert _line(out.log, "dedupe:").startswith("dedupe: dropped 1880 repeated")
    assert "earliest by step" in _line(out.log, "dedupe:")
    assert out.domains == ["arts", "office"] and out.order_by == "step"
    inter = out.interactions.to_pandas()
    assert not inter.duplicated(["user_id", "item_id"]).any()


def test_dedupe_keeps_the_earliest(ml_small):
    inter = ml_small.interactions.to_pandas()
    later = inter.iloc[:100].assign(timestamp=lambda f: f["timestamp"] + 1000, rating=np.float32(0.5))
    earlier = inter.iloc[100:150].assign(timestamp=lambda f: f["timestamp"] - 1000, rating=np.float32(0.5))
    data = _with(ml_small, pd.concat([later, inter, earlier]))
    out = clean(data, CleaningConfig(k_core=0))
    assert len(out.interactions) == len(inter)
    assert _line(out.log, "dedupe:").startswith("dedupe: dropped 150 ")
    got = out.interactions.to_pandas().set_index(["user_id", "item_id"])
    first = inter.iloc[:150].set_index(["user_id", "item_id"])
    np.testing.assert_array_equal(got.loc[first.index[:100], "timestamp"], first["timestamp"].iloc[:100])
    np.testing.assert_array_equal(
        got.loc[first.index[100:], "timestamp"], first["timestamp"].iloc[100:] - 1000
    )
    no_dedupe = clean(data, CleaningConfig(k_core=0, dedupe=False))
    assert len(no_dedupe.interactions) == len(inter) + 150
    assert not any(line.startswith("dedupe:") for line in no_dedupe.log)


def test_untitled_items_are_dropped_and_counted(ml_small):
    items = ml_small.items.to_pandas()
    blank = items["item_id"].iloc[:20]
    items.loc[:9, "title"] = ""
    items.loc[10:19, "title"] = "   "
    data = _with(ml_small, items=items)
    inter = ml_small.interactions.to_pandas()
    n_blank = int(inter["item_id"].isin(blank).sum())
    n_items = inter.loc[inter["item_id"].isin(blank), "item_id"].nunique()
    out = clean(data, CleaningConfig(k_core=0))
    assert _line(out.log, "untitled:") == (
        f"untitled: dropped {n_blank} interactions of {n_items} items with an empty title"
    )
    assert len(out.interactions) == len(inter) - n_blank
    kept = clean(data, CleaningConfig(k_core=0, drop_untitled=False))
    assert len(kept.interactions) == len(inter)


def test_items_without_catalog_row_warn(ml_small):
    items = ml_small.items.to_pandas()
    data = _with(ml_small, items=items.iloc[5:])
    inter = ml_small.interactions.to_pandas()
    n = int(inter["item_id"].isin(items["item_id"].iloc[:5]).sum())
    with pytest.warns(LlmrecWarning, match=f"catalog: dropped {n} interactions of 5 item ids"):
        out = clean(data, CleaningConfig(k_core=0))
    assert len(out.interactions) == len(inter) - n


def test_no_warning_when_everything_joins(ml_small):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LlmrecWarning)
        clean(ml_small)


def test_min_rating(ml_small):
    inter = ml_small.interactions.to_pandas()
    out = clean(ml_small, CleaningConfig(k_core=0, min_rating=4))
    assert len(out.interactions) == int((inter["rating"] >= 4).sum())
    assert min(out.interactions["rating"]) >= 4
    assert _line(out.log, "min_rating:").endswith("(0 of them without a rating)")


def test_min_rating_without_ratings_is_an_error(arts_office):
    with pytest.raises(DataError, match="no ratings") as err:
        clean(arts_office, CleaningConfig(min_rating=3))
    assert err.value.column == "rating"


def test_k_core_zero_disables(ml_small):
    out = clean(ml_small, CleaningConfig(k_core=0))
    assert len(out.interactions) == len(ml_small.interactions)
    assert not any("core" in line for line in out.log[len(ml_small.log) :])


def _reference_k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Straightforward iterative k-core with pandas groupby."""
    while True:
        users = inter.groupby("user_id")["item_id"].transform("size")
        items = inter.groupby("item_id")["user_id"].transform("size")
        keep = (users >= k) & (items >= k)
        if keep.all():
            return inter
        inter = inter[keep]


@pytest.mark.parametrize("k", [2, 10, 20])
def test_k_core_matches_reference(arts_office, k):
    inter = arts_office.interactions.to_pandas()
    keep, passes = k_core_mask(inter["user_id"].to_numpy(), inter["item_id"].to_numpy(), k)
    expected = _reference_k_core(inter, k)
    assert np.flatnonzero(keep).tolist() == expected.index.tolist()
    assert passes >= 1


def test_cleaning_to_nothing_is_an_error(ml_small):
    with pytest.raises(DataError, match="no interactions left after the k_core step"):
        clean(ml_small, CleaningConfig(k_core=1000))


@pytest.mark.parametrize(
    ("field", "value"), [("k_core", -1), ("k_core", 2.5), ("k_core", True), ("min_rating", float("nan"))]
)
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        CleaningConfig(**{field: value})
