"""Large-catalog paths: blocked fusion, vectorised top-k, the in-place EASE inverse and its memory
check, shared fused components, blocked bootstrap means. Each must give the numbers of the
simple computation it replaces, ties and all."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pytest
import scipy.linalg

import llmrec.candidates.ease as ease_module
import llmrec.candidates.fusion as fusion_module
import llmrec.evaluation.stats as stats_module
from llmrec.candidates import (
    EASEGenerator,
    FusedGenerator,
    ItemKNNGenerator,
    PopularityGenerator,
    TrainData,
    load_generator,
)
from llmrec.candidates.base import CandidateGenerator
from llmrec.candidates.ease import fit_memory_bytes, invert_spd_inplace
from llmrec.data.catalog import History, ItemCatalog
from llmrec.errors import ConfigError
from llmrec.evaluation.retrieval import rank_methods, rank_users
from llmrec.ranking import top_k


def _reference_top_k(scores: np.ndarray, k: int, tie_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """By definition: each row's finite items fully sorted by (score desc, tie_rank), first k."""
    out_idx = np.full((len(scores), k), -1, dtype=np.int64)
    out_val = np.full((len(scores), k), -np.inf, dtype=np.float32)
    for r, row in enumerate(scores):
        finite = np.flatnonzero(np.isfinite(row))
        chosen = finite[np.lexsort((tie_rank[finite], -row[finite]))][:k]
        out_idx[r, : len(chosen)] = chosen
        out_val[r, : len(chosen)] = row[chosen]
    return out_idx, out_val


def _random_scores(rng: np.random.Generator, n: int, n_items: int, ties: bool) -> np.ndarray:
    """Scores with many ties (small integers) or none, and a random share of -inf (masked)."""
    if ties:
        scores = rng.integers(-2, 3, size=(n, n_items)).astype(np.float32)
    else:
        scores = rng.random((n, n_items)).astype(np.float32)
    scores[rng.random((n, n_items)) < rng.random()] = -np.inf
    return scores


def test_top_k_equals_the_row_by_row_reference():
    rng = np.random.default_rng(0)
    for trial in range(400):
        n, n_items, k = int(rng.integers(0, 25)), int(rng.integers(1, 50)), int(rng.integers(1, 60))
        scores = _random_scores(rng, n, n_items, ties=trial % 2 == 0)
        tie_rank = rng.permutation(n_items)
        got, want = top_k(scores, k, tie_rank), _reference_top_k(scores, k, tie_rank)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


class _FixedScores(CandidateGenerator):
    """Scores read from a table by the history's first item: ties, zero rows, text users."""

    name = "fixed"

    def __init__(self, table: np.ndarray | None = None, uses_text: bool = False) -> None:
        super().__init__()
        self.table = table
        self.uses_text = uses_text

    def _fit(self, train: TrainData) -> None:
        pass

    def score(self, histories: Sequence[History]) -> np.ndarray:
        rows = [
            self.table[h.items[0] % len(self.table)] if len(h.items) else self.table[-1] for h in histories
        ]
        return np.array(rows, dtype=np.float32)


def _reference_compose(fused: FusedGenerator, histories, exclude_history, allowed) -> np.ndarray:
    """By definition, one row and one component at a time: float32 min-max (or 1 / (rrf_k +
    rank)) times the weight, summed in float64, cast to float32 once."""
    out = np.zeros((len(histories), len(fused.catalog)), dtype=np.float64)
    for g, w, on in zip(fused.generators, fused.weights, fused.active):
        if w == 0 or not on:
            continue
        for r, hist in enumerate(histories):
            if not g.uses_text and not len(hist.items):
                continue
            row = g.masked_scores([hist], exclude_history, allowed)[0]
            ok = np.isfinite(row)
            if not np.any(ok & (row != 0.0)):
                continue  # no signal: the component adds nothing
            if fused.method == "rrf":
                items = top_k(row[None, :], fused.depth, g.tie_rank)[0][0]
                for rank, item in enumerate(items[items >= 0], start=1):
                    out[r, item] += w / (fused.rrf_k + rank)
                continue
            lo, hi = row[ok].min(), row[ok].max()
            if hi > lo:
                out[r, ok] += np.float32(w) * ((row[ok] - lo) / (hi - lo))
    return out.astype(np.float32)


def _toy_train(rng: np.random.Generator, n_items: int = 40) -> TrainData:
    catalog = ItemCatalog(
        item_ids=np.asarray([f"i{i}" for i in range(n_items)], dtype=object),
        titles=[f"item {i} word{i % 5}" for i in range(n_items)],
        texts=[""] * n_items,
        domains=np.asarray(["x"] * n_items, dtype=object),
    )
    sequences = [rng.choice(n_items, size=int(rng.integers(2, 8)), replace=False) for _ in range(30)]
    return TrainData(catalog, sequences)


@pytest.mark.parametrize("method", ["weighted", "rrf"])
def test_blocked_fusion_equals_the_unblocked_reference(monkeypatch, method):
    rng = np.random.default_rng(1)
    n_items = 40
    train = _toy_train(rng, n_items)
    tables = [
        rng.integers(0, 3, size=(7, n_items)).astype(np.float32),  # many ties
        rng.random((5, n_items)).astype(np.float32) * 3.0,
        np.vstack([np.zeros((2, n_items)), rng.random((2, n_items))]).astype(np.float32),  # no-signal rows
    ]
    components = [
        _FixedScores(tables[0]),
        _FixedScores(tables[1], uses_text=True),
        _FixedScores(tables[2]),
    ]
    fused = FusedGenerator(components, weights=[1.0, 0.7, 2.5], method=method, depth=6).fit(train)
    histories = [
        History(items=rng.choice(n_items, size=int(rng.integers(0, 6)), replace=False)) for _ in range(23)
    ]
    histories += [History(text="free text only"), History()]
    allowed = rng.random(n_items) < 0.8
    monkeypatch.setattr(fusion_module, "COMPOSE_ROWS", 4)
    for exclude, mask in ((True, None), (True, allowed), (False, allowed)):
        got = fused._compose(histories, exclude, mask)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _reference_compose(fused, histories, exclude, mask))
        want = fused.candidates(histories, k=9, exclude_history=exclude, allowed=mask)
        scores = fused.masked_scores(histories, exclude, mask)
        np.testing.assert_array_equal(top_k(scores, 9, fused.tie_rank)[0], want.items)


def test_spd_inverse_in_place_equals_scipy():
    rng = np.random.default_rng(2)
    x = (rng.random((300, 120)) < 0.1).astype(np.float64)
    gram = x.T @ x + 5.0 * np.eye(120)
    want = scipy.linalg.inv(gram.copy(), check_finite=False)
    for arr in (np.ascontiguousarray(gram), np.asfortranarray(gram)):
        got = invert_spd_inplace(arr)
        assert got is arr
        np.testing.assert_array_equal(got, want)


def test_ease_memory_estimate_is_logged_and_an_impossible_fit_refused(monkeypatch, caplog):
    assert fit_memory_bytes(16_000) == 12 * 16_000**2  # 3.1 GB: float64 inverse + float32 weights
    assert fit_memory_bytes(10, interactions=100) == 12 * 100 + 24 * 100
    train = _toy_train(np.random.default_rng(3))
    with caplog.at_level(logging.INFO, logger="llmrec.candidates.ease"):
        EASEGenerator().fit(train)
    assert "needs ~" in caplog.text and "GB" in caplog.text
    monkeypatch.setattr(ease_module, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ConfigError, match="max_items") as err:
        EASEGenerator(max_items=5000).fit(train)
    assert err.value.parameter == "max_items" and err.value.value == 5000
    assert "GB" in str(err.value) and "memory is available" in str(err.value)
    # fused drops a default component that cannot fit, as above max_items.
    with pytest.warns(match="ease"):
        fused = FusedGenerator().fit(train)
    assert fused.active.count(False) == 1


def test_ease_weights_are_c_ordered_also_when_loaded(tmp_path):
    train = _toy_train(np.random.default_rng(4))
    gen = EASEGenerator().fit(train)
    assert gen.weights.flags.c_contiguous
    folder = gen.save(tmp_path / "ease")
    np.save(folder / "weights.npy", np.asfortranarray(gen.weights))  # as older versions saved it
    loaded = load_generator(folder)
    assert loaded.weights.flags.c_contiguous
    hists = [History(items=np.array([0, 1, 2]))]
    np.testing.assert_array_equal(loaded.score(hists), gen.score(hists))


def test_fused_reuses_fitted_components_with_the_same_parameters():
    train = _toy_train(np.random.default_rng(5))
    knn, pop = ItemKNNGenerator().fit(train), PopularityGenerator().fit(train)
    other = ItemKNNGenerator(shrink=3.0).fit(train)
    fresh = FusedGenerator([ItemKNNGenerator(), PopularityGenerator()]).fit(train)
    shared = FusedGenerator([ItemKNNGenerator(), PopularityGenerator()])
    shared.use_fitted({"itemknn": knn, "popularity": None}).fit(train)
    assert shared.generators[0] is knn and shared.generators[1] is not pop
    mismatched = FusedGenerator([ItemKNNGenerator(), PopularityGenerator()]).use_fitted({"itemknn": other})
    assert mismatched.generators[0] is not other
    hists = [History(items=np.array([0, 3])), History(items=np.array([5]))]
    np.testing.assert_array_equal(shared.candidates(hists, k=10).items, fresh.candidates(hists, k=10).items)


def test_bootstrap_means_do_not_depend_on_the_block(monkeypatch):
    rng = np.random.default_rng(6)
    values = rng.random(500)
    indices = stats_module.bootstrap_indices(500, 64, seed=0)
    want = values[indices.astype(np.int64)].mean(axis=1)
    monkeypatch.setattr(stats_module, "RESAMPLE_BLOCK_VALUES", 1_700)  # 3 resamples a block
    np.testing.assert_array_equal(stats_module.resample_means(values, indices), want)
    drawn = np.random.default_rng(0).integers(0, 500, size=(64, 500))
    np.testing.assert_array_equal(indices, drawn)


def test_ranking_methods_together_equals_one_by_one():
    rng = np.random.default_rng(7)
    train = _toy_train(rng)
    knn, ease = ItemKNNGenerator().fit(train), EASEGenerator().fit(train)
    fused = FusedGenerator([ItemKNNGenerator(), EASEGenerator(), PopularityGenerator()])
    fused.use_fitted({"itemknn": knn, "ease": ease}).fit(train)
    separate = FusedGenerator([ItemKNNGenerator(), EASEGenerator(), PopularityGenerator()]).fit(train)
    histories = [
        History(items=rng.choice(40, size=int(rng.integers(1, 6)), replace=False)) for _ in range(11)
    ]
    targets = rng.integers(0, 40, size=11)
    allowed = rng.random(40) < 0.9
    methods = {"itemknn": knn, "fused": fused, "ease": ease}
    together = rank_methods(methods, histories, targets, allowed, num_candidates=6, batch_size=4)
    assert list(together) == list(methods)
    for name, gen in [*methods.items(), ("fused", separate)]:
        alone = rank_users(gen, histories, targets, allowed, num_candidates=6, batch_size=4)
        np.testing.assert_array_equal(together[name].ranks, alone.ranks)
        np.testing.assert_array_equal(together[name].candidates, alone.candidates)
        np.testing.assert_array_equal(together[name].fallback, alone.fallback)
