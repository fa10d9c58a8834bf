"""Fit once, load many: saved generators and datasets read back identically (real ml-latest-small)."""

from __future__ import annotations

import pytest

from llmrec.data import clean, load_dataset
from llmrec.io import atomic_dir


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.npy").write_bytes(b"...")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_saved_dataset_loads_back(tmp_path):
    cleaned = clean(load_dataset("ml-latest-small"))
    cleaned.save(tmp_path / "ml")
    loaded = load_dataset(tmp_path / "ml")
    assert loaded.interactions.to_pandas().equals(cleaned.interactions.to_pandas())
    assert loaded.items.to_pandas().equals(cleaned.items.to_pandas())
    assert loaded.stats() == cleaned.stats() and loaded.log == cleaned.log
    assert clean(loaded).stats() == cleaned.stats(), "cleaning a cleaned dataset changes nothing"
