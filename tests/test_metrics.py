import numpy as np
import pytest

from llmrec.evaluation.metrics import ndcg_at_k, recall_at_k, reciprocal_rank, summarize_ranks
from llmrec.ranking import popularity_tie_rank, rank_of, top_k


def test_metrics_known_values():
    ranks = np.array([1, 2, 10, 11])
    assert ndcg_at_k(ranks, 10).tolist() == pytest.approx([1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])
    assert recall_at_k(ranks, 10).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert reciprocal_rank(ranks).tolist() == pytest.approx([1.0, 0.5, 0.1, 1 / 11])
    summary = summarize_ranks(ranks, ks=(1, 10))
    assert summary["recall@1"] == 0.25
    assert summary["recall@10"] == 0.75
    assert summary["mrr"] == pytest.approx((1 + 0.5 + 0.1 + 1 / 11) / 4)


def test_summary_of_no_users_is_nan_not_zero():
    assert np.isnan(summarize_ranks(np.array([]), ks=(10,))["ndcg@10"])


def test_ties_break_by_popularity_then_index():
    counts = np.array([5, 9, 9, 1])
    tie = popularity_tie_rank(counts)
    assert tie.tolist() == [2, 0, 1, 3]
    scores = np.zeros((1, 4), dtype=np.float32)
    items, _ = top_k(scores, 3, tie)
    assert items.tolist() == [[1, 2, 0]]
    # rank_of agrees with top_k's order for every item
    for pos, item in enumerate([1, 2, 0, 3]):
        assert rank_of(scores, np.array([item]), tie)[0] == pos + 1


def test_top_k_skips_excluded_and_pads():
    scores = np.array([[0.5, -np.inf, 0.9, -np.inf]], dtype=np.float32)
    items, vals = top_k(scores, 3, np.arange(4))
    assert items.tolist() == [[2, 0, -1]]
    assert vals[0, 2] == -np.inf


def test_rank_of_matches_full_sort_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(20, 50)).astype(np.float32)  # many ties
    tie = popularity_tie_rank(rng.integers(0, 10, size=50))
    targets = rng.integers(0, 50, size=20)
    items, _ = top_k(scores, 50, tie)
    expected = [int(np.flatnonzero(items[r] == targets[r])[0]) + 1 for r in range(20)]
    assert rank_of(scores, targets, tie).tolist() == expected
