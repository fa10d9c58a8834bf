"""Known answers of the new-item slots: the base retriever's list with its last places given to
the new items (no training interactions) a content generator ranks highest."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec.candidates import NewItemSlotsGenerator, TrainData, load_generator, make_generator
from llmrec.data.catalog import History, ItemCatalog
from llmrec.errors import ConfigError


@pytest.fixture(scope="module")
def train() -> TrainData:
    """Alpha items 0-9 and beta items 10-19 (each user stays in one group); items 20 ("Alpha
    Saga premiere") and 21 ("Beta Chronicle premiere") are new: nobody has watched them."""
    rng = np.random.default_rng(0)
    titles = [f"Alpha Saga x{i}" for i in range(10)] + [f"Beta Chronicle y{i}" for i in range(10)]
    titles += ["Alpha Saga premiere", "Beta Chronicle premiere", "Gamma Extra"]
    n = len(titles)
    catalog = ItemCatalog(
        item_ids=np.asarray([f"i{i:02d}" for i in range(n)], dtype=object),
        titles=titles,
        texts=[""] * n,
        domains=np.asarray(["x"] * n, dtype=object),
    )
    seqs = [rng.permutation(10)[:6] for _ in range(30)] + [10 + rng.permutation(10)[:6] for _ in range(60)]
    seqs.append(np.asarray([22, 22, 22]))  # "Gamma Extra": established, outside both groups
    return TrainData(catalog, [s.astype(np.int64) for s in seqs])


def test_last_places_hold_the_content_generators_new_items(train):
    slots = make_generator("new-slots", base="itemknn", content="bm25", slots=2, k=5).fit(train)
    base = make_generator("itemknn").fit(train)
    alpha, beta = History(items=np.asarray([0, 1, 2])), History(items=np.asarray([10, 11, 12]))
    got = slots.candidates([alpha, beta], k=6).items
    want = base.candidates([alpha, beta], k=3).items
    np.testing.assert_array_equal(got[:, :3], want)  # places 1..k-slots: the base order
    assert not np.isin(want, [20, 21]).any()  # collaborative scores never reach new items
    assert got[0, 3] == 20 and got[1, 3] == 21  # the new item whose text fits the history first
    assert set(got[:, 4]) == {21, 20}
    assert slots.new_items().tolist() == [False] * 20 + [True, True, False]
    # After the slots, the base order again.
    assert got[0, 5] == base.candidates([alpha], k=4).items[0, 3]


def test_no_slots_or_no_signal_is_the_base_order(train):
    base = make_generator("itemknn").fit(train)
    none = NewItemSlotsGenerator(base="itemknn", content="bm25", slots=0, k=5).fit(train)
    hist = [History(items=np.asarray([0, 1])), History(items=np.asarray([15]))]
    np.testing.assert_array_equal(none.candidates(hist, k=8).items, base.candidates(hist, k=8).items)
    slots = NewItemSlotsGenerator(base="itemknn", content="bm25", slots=2, k=5).fit(train)
    assert not slots.score([History()]).any()  # no signal anywhere: popularity fallback
    assert slots.candidates([History()], k=3).fallback[0]
    # The allowed mask reaches the slots: with the alpha premiere disallowed, the only new item
    # left shares no word with the history (no content signal), so the base order fills on.
    allowed = np.ones(len(train.catalog), dtype=bool)
    allowed[20] = False
    alpha = [History(items=np.asarray([0, 1, 2]))]
    got = slots.candidates(alpha, k=5, allowed=allowed).items
    np.testing.assert_array_equal(got, base.candidates(alpha, k=5, allowed=allowed).items)


def test_save_load_and_parameter_errors(train, tmp_path):
    gen = NewItemSlotsGenerator(base="itemknn", content="bm25", slots=2, k=5).fit(train)
    back = load_generator(gen.save(tmp_path / "slots"))
    hist = [History(items=np.asarray([0, 1, 2])), History(items=np.asarray([10, 11]))]
    np.testing.assert_array_equal(back.masked_scores(hist), gen.masked_scores(hist))
    assert back.params() == gen.params()
    with pytest.raises(ConfigError, match="slots"):
        NewItemSlotsGenerator(slots=21, k=20)
    with pytest.raises(ConfigError, match="max_count"):
        NewItemSlotsGenerator(max_count=-1)
    with pytest.raises(ConfigError, match="valid names"):
        NewItemSlotsGenerator(content="tfidf")
