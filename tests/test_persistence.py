"""Fit once, load many: saved generators and datasets read back identically (real ml-latest-small)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmrec.candidates import GENERATORS, PopularityGenerator, TrainData, load_generator
from llmrec.data import clean, load_dataset
from llmrec.data.catalog import History
from llmrec.errors import ConfigError, DataError
from llmrec.io import atomic_dir


@pytest.fixture(scope="module")
def data(ml_small_split) -> tuple[TrainData, list[History]]:
    """Training data of the test stage; 50 users' histories plus one a new user typed."""
    split = ml_small_split
    typed = History.from_titles(["Toy Story", "Jumanji", "a film about dragons and wizards"], split.catalog)
    histories = [*split.histories("test", split.eval_users("test")[:50]), typed]
    return TrainData(split.catalog, split.sequences("test")), histories


@pytest.mark.parametrize(
    "name", sorted(set(GENERATORS) - {"cross-ease", "cross-userknn"})
)  # two domains: test_crossdomain
def test_save_load_gives_identical_candidates(name, data, tmp_path):
    train, histories = data
    gen = GENERATORS[name]().fit(train)
    before = gen.candidates(histories, k=20)
    loaded = load_generator(gen.save(tmp_path / name), name=name)
    after = loaded.candidates(histories, k=20)
    assert type(loaded) is type(gen) and loaded.params() == gen.params()
    np.testing.assert_array_equal(after.items, before.items)
    np.testing.assert_array_equal(after.scores, before.scores)
    np.testing.assert_array_equal(after.fallback, before.fallback)
    np.testing.assert_array_equal(loaded.tie_rank, gen.tie_rank)
    assert loaded.catalog.to_json() == gen.catalog.to_json()
    if gen.uses_text:
        assert not after.fallback[-1], "the typed history must reach the text generator"
    if name == "fused":  # components in sub-folders, the catalog once
        assert len(list((tmp_path / name).rglob("catalog.json"))) == 1
        assert [g.name for g in loaded.generators] == [g.name for g in gen.generators]


@pytest.fixture
def saved(data, tmp_path):
    return PopularityGenerator().fit(data[0]).save(tmp_path / "pop")


def _edit_meta(folder, **changes):
    meta_file = folder / "generator.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **changes}))


def test_load_refuses_unknown_name_newer_version_and_missing_folder(saved, tmp_path):
    with pytest.raises(ConfigError, match="expected 'ease'"):
        load_generator(saved, name="ease")
    _edit_meta(saved, name="word2vec")
    with pytest.raises(ConfigError, match=r"name='word2vec'.*generator\.json"):
        load_generator(saved)
    _edit_meta(saved, name="popularity", format_version=99)
    with pytest.raises(ConfigError, match="newer format"):
        load_generator(saved)
    with pytest.raises(DataError, match="does not exist"):
        load_generator(tmp_path / "nowhere")


def test_save_replaces_a_previous_save_only(data, saved, tmp_path):
    gen = PopularityGenerator().fit(data[0])
    gen.save(saved)  # over a previous save: fine
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a previous save"):
        gen.save(other)
    assert (other / "keep.txt").read_text() == "mine"


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
