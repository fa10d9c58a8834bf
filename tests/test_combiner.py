"""The listwise linear combiner (llmrec.evaluation.combiner) and the stage-vs-retriever summary."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from llmrec.evaluation.combiner import combined_ranks, fit_best, fit_combiner, fit_with_windows, zscore
from llmrec.evaluation.llm_stage import versus_retriever
from llmrec.evaluation.metrics import ndcg_at_k


def stage(seed: int, listed: int = 200, others: int = 50, k: int = 10) -> dict:
    """Lists whose held-out item a noisy ``signal`` feature points at; ``noise`` carries nothing;
    ``others`` users were not listed and keep retriever rank 50."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, size=listed)
    signal = rng.normal(size=(listed, k))
    signal[np.arange(listed), target] += 2.0
    position = np.tile(np.log(1.0 / np.arange(1, k + 1)), (listed, 1))
    ranks = np.concatenate([target + 1, np.full(others, 50)])
    return {
        "feats": {
            "position": position,
            "signal": zscore(signal),
            "noise": zscore(rng.normal(size=(listed, k))),
        },
        "target": target,
        "sel": np.arange(listed),
        "ranked": SimpleNamespace(ranks=ranks),
    }


def test_the_combiner_learns_the_feature_that_points_at_the_held_out_item():
    train, test = stage(0), stage(1)
    names = ["position", "signal", "noise"]
    w = fit_combiner(train, names, l2=1.0)
    assert w[1] > 1.0 and abs(w[2]) < 0.3 * w[1]
    ranks = combined_ranks(test, names, w)
    assert np.array_equal(ranks[200:], test["ranked"].ranks[200:])  # unlisted users keep their rank
    assert ranks[:200].mean() < 0.6 * test["ranked"].ranks[:200].mean()
    # Position alone, weight 1, gives back the retriever's order exactly.
    assert np.array_equal(combined_ranks(test, ["position"], np.array([1.0])), test["ranked"].ranks)


def test_penalty_choice_and_windows():
    valid, window = stage(2), stage(3)
    names = ["position", "signal"]
    v_best, l2, w = fit_best(valid, names, [0.1, 1.0, 100.0])
    assert v_best == ndcg_at_k(combined_ranks(valid, names, w), 10).mean()
    assert v_best > ndcg_at_k(valid["ranked"].ranks, 10).mean() + 0.1 and w[1] > 0
    assert fit_with_windows(valid, [], names, [0.1, 1.0, 100.0])[1] == l2  # no windows: fit_best
    v_out, _, w_w = fit_with_windows(valid, [window], names, [0.1, 1.0, 100.0])
    # Judged out of sample on validation, refit on both: still far above the retriever.
    assert v_out > ndcg_at_k(valid["ranked"].ranks, 10).mean() + 0.1 and w_w[1] > 0


def test_versus_retriever_pairs_users_and_counts_the_retrieved():
    ref = np.array([1, 2, 30, 5, 50, 3] * 20)
    same = versus_retriever(ref, ref, retrieved=80, resamples=200, seed=0)
    assert tuple(same["diff_vs_retriever"][:3]) == (0.0, 0.0, 0.0) and same["retrieved"] == 80
    better = np.where(ref <= 5, 1, ref)
    up = versus_retriever(better, ref, retrieved=80, resamples=200, seed=0)
    assert up["diff_vs_retriever"][1] > 0 and up["ndcg@10"][0] > up["retriever_ndcg@10"][0]
