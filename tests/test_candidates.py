"""Contract, known-answer and free-text tests of every candidate generator (real ml-latest-small)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from llmrec.candidates import (
    GENERATORS,
    BM25Generator,
    CandidateGenerator,
    EASEGenerator,
    FusedGenerator,
    ItemKNNGenerator,
    MFGenerator,
    PlainEASEGenerator,
    PopularityGenerator,
    TrainData,
    TransitionGenerator,
    load_generator,
    make_generator,
    tokenize,
)
from llmrec.candidates.itemknn import history_matrix
from llmrec.candidates.mf import fold_in
from llmrec.data.catalog import History, ItemCatalog
from llmrec.errors import ConfigError, LlmrecWarning

# name -> factory of an unfitted generator; every registered generator, plus BPR.
# cross-ease and cross-userknn need two domains (tests/test_crossdomain.py); ml-latest-small has one.
FACTORIES = {name: cls for name, cls in GENERATORS.items() if name not in ("cross-ease", "cross-userknn")}
FACTORIES["mf-bpr"] = lambda: MFGenerator(model="bpr", iterations=10)
TEXT_GENERATORS = {"bm25", "fused", "fused-cross", "fused-seq", "embedding", "new-slots"}
LEXICAL_GENERATORS = {"bm25", "fused", "fused-cross", "fused-seq"}


@pytest.fixture(scope="module")
def valid_train(ml_small_split) -> TrainData:
    return TrainData(ml_small_split.catalog, ml_small_split.sequences("valid"))


@pytest.fixture(scope="module")
def histories50(ml_small_split) -> list[History]:
    users = ml_small_split.eval_users("valid")[:50]
    return ml_small_split.histories("valid", users)


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def fitted(request, valid_train) -> tuple[str, CandidateGenerator]:
    return request.param, FACTORIES[request.param]().fit(valid_train)


# --- the contract every generator passes ------------------------------------------------


def test_candidates_contract(fitted, histories50):
    _, gen = fitted
    cands = gen.candidates(histories50, k=20)
    assert cands.items.shape == (50, 20) and cands.scores.shape == (50, 20)
    assert cands.scores.dtype == np.float32
    for row, scores, hist in zip(cands.items, cands.scores, histories50):
        assert (row >= 0).all()
        assert len(set(row.tolist())) == 20, "duplicate candidates"
        assert not set(row.tolist()) & set(hist.items.tolist()), "history item returned"
        assert np.all(np.diff(scores) <= 0), "scores not non-increasing"
    assert not cands.fallback.any()


def test_deterministic(fitted, valid_train, histories50):
    name, gen = fitted
    again = FACTORIES[name]().fit(valid_train)
    a, b = gen.candidates(histories50, k=20), again.candidates(histories50, k=20)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_empty_history_is_popularity_order(fitted):
    _, gen = fitted
    cands = gen.candidates([History()], k=20)
    expected = np.argsort(gen.tie_rank)[:20]
    np.testing.assert_array_equal(cands.items[0], expected)
    assert cands.fallback[0]
    assert not gen.score([History()]).any(), "empty history must score all zeros"


def test_allowed_mask(fitted, histories50):
    _, gen = fitted
    allowed = np.random.default_rng(0).random(len(gen.catalog)) < 0.3
    cands = gen.candidates(histories50[:10], k=20, allowed=allowed)
    assert allowed[cands.items].all()


def test_free_text_history(fitted):
    name, gen = fitted
    hist = History(text="Toy Story Jumanji")
    cands = gen.candidates([hist], k=10)
    if name not in TEXT_GENERATORS:
        assert cands.fallback[0], "CF generators have no signal from free text: popularity fallback"
        return
    assert not cands.fallback[0]
    titles = [gen.catalog.titles[i] for i in cands.items[0]]
    assert any(t.startswith("Toy Story 2") for t in titles), titles
    if name in LEXICAL_GENERATORS:
        assert all({"toy", "story", "jumanji"} & set(tokenize(t)) for t in titles[:3]), titles


# --- known answers on a tiny synthetic catalog -------------------------------------------


def _two_groups() -> tuple[TrainData, list[str]]:
    """Items 0-9 ("alpha") and 10-19 ("beta"); each user only touches one group. Beta is
    watched by more users, so popularity alone would recommend the wrong group to alpha users.
    Item 20 is never watched: with 21 documents "alpha"/"beta" get a positive BM25Okapi idf
    (in exactly half of the documents it would be 0)."""
    rng = np.random.default_rng(0)
    titles = [f"Alpha Saga x{i}" for i in range(10)] + [f"Beta Chronicle y{i}" for i in range(10)]
    titles.append("Gamma Extra")
    catalog = ItemCatalog(
        item_ids=np.asarray([f"i{i:02d}" for i in range(21)], dtype=object),
        titles=titles,
        texts=[""] * 21,
        domains=np.asarray(["x"] * 21, dtype=object),
    )
    seqs = [rng.permutation(10)[:6] for _ in range(30)] + [10 + rng.permutation(10)[:6] for _ in range(60)]
    return TrainData(catalog, [s.astype(np.int64) for s in seqs]), titles


KNOWN_ANSWER = {
    "itemknn": lambda: ItemKNNGenerator(),
    "ease": lambda: EASEGenerator(l2=10.0),
    "ease-plain": lambda: PlainEASEGenerator(l2=10.0),
    "mf": lambda: MFGenerator(factors=4, iterations=20),
    "bm25": lambda: BM25Generator(),
    "fused": lambda: FusedGenerator(),
    "fused-rrf": lambda: FusedGenerator(method="rrf", rrf_k=10, depth=10),
}


@pytest.mark.parametrize("name", sorted(KNOWN_ANSWER))
def test_known_answer_two_groups(name):
    train, _ = _two_groups()
    gen = KNOWN_ANSWER[name]().fit(train)
    hists = [History(items=np.array([0, 1, 2])), History(items=np.array([12, 15]))]
    cands = gen.candidates(hists, k=7)
    assert set(cands.items[0].tolist()) == set(range(3, 10))
    assert set(cands.items[1].tolist()) <= set(range(10, 20))


def test_transition_known_answer_and_recency():
    catalog = ItemCatalog(
        item_ids=np.asarray([f"i{i}" for i in range(5)], dtype=object),
        titles=[f"t{i}" for i in range(5)],
        texts=[""] * 5,
        domains=np.asarray(["x"] * 5, dtype=object),
    )
    seqs = [[0, 1, 2], [0, 1, 2], [0, 3], [4, 0, 1]]
    train = TrainData(catalog, [np.asarray(s, dtype=np.int64) for s in seqs])
    gen = TransitionGenerator(max_gap=2, gap_decay=0.5).fit(train)
    # after 0: 1 three times at gap 1; 2 twice at gap 2 (weight 0.5); 3 once -> 3 : 1 : 1 of 5
    cands = gen.candidates([History(items=np.array([0]))], k=3)
    assert cands.items[0].tolist() == [1, 2, 3]  # 2 before 3 on the popularity tie-break
    np.testing.assert_allclose(cands.scores[0], [0.6, 0.2, 0.2], rtol=1e-6)
    # the last item counts fully, the one before it half: 2 = 0.2 + 0.5 * 1.0 (1 -> 2 always)
    cands = gen.candidates([History(items=np.array([1, 0]))], k=2)
    assert cands.items[0].tolist() == [2, 3]
    np.testing.assert_allclose(cands.scores[0], [0.7, 0.2], rtol=1e-6)
    # only the last_n most recent items are read
    far = TransitionGenerator(max_gap=2, gap_decay=0.5, last_n=1).fit(train)
    assert far.score([History(items=np.array([1, 0]))])[0, 2] == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="max_gap"):
        TransitionGenerator(max_gap=0)
    with pytest.raises(ConfigError, match="recency_decay"):
        TransitionGenerator(recency_decay=0.0)


def test_popularity_known_answer():
    train, _ = _two_groups()
    gen = PopularityGenerator().fit(train)
    cands = gen.candidates([History(items=np.array([0]))], k=10)
    assert set(cands.items[0].tolist()) == set(range(10, 20))  # beta: 60 users vs 30
    np.testing.assert_array_equal(gen.counts, train.item_counts())


def test_bm25_free_text_synthetic():
    train, _ = _two_groups()
    gen = BM25Generator().fit(train)
    cands = gen.candidates([History(text="the BETA chronicles")], k=10)  # "chronicles" is unknown
    assert set(cands.items[0].tolist()) == set(range(10, 20))


def test_itemknn_recency_prefers_recent_group():
    train, _ = _two_groups()
    gen = ItemKNNGenerator(recency_decay=0.5).fit(train)
    # Oldest first: two alpha items, then one beta item; the recent beta item wins.
    cands = gen.candidates([History(items=np.array([0, 1, 10]))], k=3)
    assert set(cands.items[0].tolist()) <= set(range(11, 20))
    uniform = ItemKNNGenerator(recency_decay=1.0).fit(train)
    assert set(uniform.candidates([History(items=np.array([0, 1, 10]))], k=3).items[0].tolist()) <= set(
        range(2, 10)
    )


def test_itemknn_neighbors_prunes_rows():
    train, _ = _two_groups()
    gen = ItemKNNGenerator(neighbors=3).fit(train)
    assert np.diff(gen.similarity.indptr).max() <= 3
    assert gen.similarity.diagonal().sum() == 0


# --- pieces -------------------------------------------------------------------------------


def test_history_matrix_recency_and_duplicates():
    mat = history_matrix([History(items=np.array([3, 1, 3])), History()], 5, recency_decay=0.5).toarray()
    np.testing.assert_allclose(mat[0], [0, 0.5, 0, 1.0, 0])  # repeated item keeps its latest weight
    assert not mat[1].any()


def test_mf_fold_in_matches_implicit(valid_train, histories50):
    gen = MFGenerator().fit(valid_train)
    h = history_matrix(histories50[:10], len(gen.catalog), gen.recency_decay).astype(np.float32)
    ours = fold_in(gen.item_factors, h, gen.regularization, gen.alpha)
    theirs = gen.estimator.recalculate_user(np.arange(10), h)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)


def test_tokenize():
    assert tokenize("The Lord of the Rings: Return (2003) Sci-Fi") == [
        "lord",
        "rings",
        "return",
        "2003",
        "sci",
        "fi",
    ]
    assert tokenize("AMÉLIE Straße") == ["amélie", "strasse"]  # casefold, Unicode words
    assert tokenize("") == []


def test_make_generator_and_errors():
    assert set(GENERATORS) == {
        "popularity",
        "bm25",
        "itemknn",
        "mf",
        "ease",
        "ease-plain",
        "embedding",
        "transition",
        "cross-ease",
        "cross-userknn",
        "fused",
        "fused-cross",
        "fused-seq",
        "new-slots",
    }
    for name, cls in GENERATORS.items():
        assert cls.name == name
        assert isinstance(make_generator(name), cls)
    assert make_generator("ease", l2=10.0).l2 == 10.0
    with pytest.raises(ConfigError, match="valid names: popularity, bm25"):
        make_generator("sasrec")
    with pytest.raises(ConfigError, match="valid parameters: l2"):
        make_generator("ease", lambda_=3)
    with pytest.raises(ConfigError, match="backend"):
        BM25Generator(backend="lucene")
    with pytest.raises(ConfigError, match="recency_decay"):
        ItemKNNGenerator(recency_decay=0.0)
    with pytest.raises(ConfigError, match="method"):
        FusedGenerator(method="borda")
    with pytest.raises(ConfigError, match="weights"):
        FusedGenerator([BM25Generator()], weights=[1.0, 2.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        ItemKNNGenerator().candidates([History()])


def test_ease_plain_and_fitted_items(tmp_path):
    """``ease-plain`` is binary EASE; only items with a training interaction count towards
    ``max_items`` (item 20 has none), and the error names the YAML key that raises it."""
    train, _ = _two_groups()
    plain = make_generator("ease-plain", l2=10.0)
    assert plain.recency_decay == 1.0 and plain.params() == {"l2": 10.0, "max_items": 20_000}
    gen = EASEGenerator(l2=10.0, max_items=20).fit(train)
    assert gen.fitted_items.tolist() == list(range(20))
    assert not gen.score([History(items=np.array([0, 1]))])[0, 20]
    with pytest.raises(ConfigError, match=r"generator_params: \{ease-plain: \{max_items: 20\}\}"):
        PlainEASEGenerator(max_items=19).fit(train)
    # A folder saved before fitted_items existed holds weights over the whole catalog.
    folder = gen.save(tmp_path / "ease")
    full = np.zeros((21, 21), dtype=np.float32)
    full[:20, :20] = gen.weights
    np.save(folder / "weights.npy", full)
    (folder / "fitted_items.npy").unlink()
    hists = [History(items=np.array([0, 1, 2])), History(items=np.array([12, 15]))]
    np.testing.assert_array_equal(load_generator(folder).score(hists), gen.score(hists))


def test_ease_max_items():
    train, _ = _two_groups()
    with pytest.raises(ConfigError, match="max_items"):
        EASEGenerator(max_items=10).fit(train)
    # Chosen components must work...
    with pytest.raises(ConfigError):
        FusedGenerator([ItemKNNGenerator(), EASEGenerator(max_items=10)]).fit(train)
    # ...a default one that cannot handle the catalog is skipped with a warning.
    fused = FusedGenerator()
    for g in fused.generators:
        if isinstance(g, EASEGenerator):
            g.max_items = 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused.fit(train)
    assert any(issubclass(w.category, LlmrecWarning) and "ease" in str(w.message) for w in caught)
    assert fused.active.count(False) == 1
    assert set(fused.candidates([History(items=np.array([0, 1, 2]))], k=7).items[0].tolist()) == set(
        range(3, 10)
    )


def test_fused_text_user_uses_bm25_only(valid_train):
    fused = FusedGenerator().fit(valid_train)
    bm25 = next(g for g in fused.generators if isinstance(g, BM25Generator))
    hist = [History(text="Toy Story Jumanji")]
    np.testing.assert_array_equal(fused.candidates(hist, k=10).items, bm25.candidates(hist, k=10).items)
