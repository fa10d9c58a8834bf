"""The sparse BM25 path reproduces rank_bm25's BM25Okapi (the reference) exactly."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec.candidates import BM25Generator, TrainData, tokenize
from llmrec.data.catalog import History, ItemCatalog

rank_bm25 = pytest.importorskip("rank_bm25")


@pytest.fixture(scope="module")
def fitted_pair(ml_small_split):
    train = TrainData(ml_small_split.catalog, ml_small_split.sequences("test"))
    return BM25Generator(backend="sparse").fit(train), BM25Generator(backend="rank_bm25").fit(train)


def test_sparse_matches_rank_bm25_on_real_histories(ml_small_split, fitted_pair):
    fast, ref = fitted_pair
    users = ml_small_split.eval_users("test")[:100]
    hists = ml_small_split.histories("test", users)
    # Free text with repeats, stopwords and out-of-vocabulary words, and a mixed history.
    hists += [
        History(text="Toy Story toy STORY the Jumanji zzzunknownzzz"),
        History(items=hists[0].items[:3], text="heat"),
    ]
    a, b = fast.score(hists), ref.score(hists)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fast.candidates(hists, k=20).items, ref.candidates(hists, k=20).items)


def test_reference_backend_is_plain_bm25okapi(ml_small_split, fitted_pair):
    """The reference path is BM25Okapi over the same tokens, nothing more."""
    fast, _ = fitted_pair
    catalog = ml_small_split.catalog
    corpus = [tokenize(catalog.item_text(i)) for i in range(len(catalog))]
    okapi = rank_bm25.BM25Okapi(corpus)
    hist = ml_small_split.histories("test", np.array([0]))[0]
    expected = okapi.get_scores(fast.query_tokens(hist))
    np.testing.assert_allclose(fast.score([hist])[0], expected, rtol=1e-5, atol=1e-6)


def test_negative_idf_floor_matches():
    """A term in more than half the documents gets rank_bm25's epsilon * mean(idf) floor."""
    texts = ["common red apple", "common green apple", "common blue", "rare gem", "common common red"]
    catalog = ItemCatalog(
        item_ids=np.asarray([f"d{i}" for i in range(5)], dtype=object),
        titles=texts,
        texts=[""] * 5,
        domains=np.asarray(["x"] * 5, dtype=object),
    )
    train = TrainData(catalog, [np.array([0, 1]), np.array([2, 3, 4])])
    fast = BM25Generator(epsilon=0.3).fit(train)
    okapi = rank_bm25.BM25Okapi([tokenize(t) for t in texts], epsilon=0.3)
    col = fast.vocabulary["common"]
    assert fast.idf[col] == pytest.approx(okapi.idf["common"]) and okapi.idf["common"] > 0
    for query in ["common", "common red red", "apple gem unknown", "blue common"]:
        np.testing.assert_allclose(
            fast.score([History(text=query)])[0], okapi.get_scores(tokenize(query)), rtol=1e-6, atol=1e-9
        )
