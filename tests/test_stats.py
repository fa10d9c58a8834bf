"""Bootstrap CIs and paired comparisons: coverage on data with a known mean, planted differences."""

import numpy as np

from llmrec.evaluation.config import EvalConfig
from llmrec.evaluation.experiment import run_evaluation
from llmrec.evaluation.stats import bootstrap_indices, mean_ci, paired_difference, uncertainty


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    true_mean, trials, covered = 0.3, 300, 0
    for t in range(trials):
        values = (rng.random(300) < true_mean).astype(float)  # per-user hits, like Recall@K
        _, low, high = mean_ci(values, bootstrap_indices(300, 500, seed=t))
        covered += low <= true_mean <= high
    assert 0.90 <= covered / trials <= 0.99


def test_paired_test_finds_a_planted_difference_and_none_against_itself():
    rng = np.random.default_rng(1)
    base = rng.random(400)
    better = base + 0.05 + rng.normal(0, 0.1, 400)
    idx = bootstrap_indices(400, 1000, seed=0)
    diff, low, high, p = paired_difference(better, base, idx)
    assert 0.03 < diff < 0.07 and low > 0 and p < 0.01
    assert paired_difference(base, base, idx) == (0.0, 0.0, 0.0, 1.0)
    noise = base + rng.normal(0, 0.1, 400)  # no planted difference
    _, low, high, p = paired_difference(noise, base, idx)
    assert low < 0 < high and p > 0.05


def test_uncertainty_rows_and_comparisons_are_flat_and_seeded():
    ranks = {"all": {"a": np.array([1, 3, 50, 2, 8]), "b": np.array([2, 1, 60, 9, 1])}}
    rows, comparisons = uncertainty(ranks, {"b": "a", "a": None}, [10], 20, resamples=200, seed=3)
    assert {r["metric"] for r in rows} == {"ndcg@10", "recall@10", "mrr", "cand_recall@20"}
    assert {(c["method"], c["baseline"]) for c in comparisons} == {("b", "a")}
    assert uncertainty(ranks, {"b": "a"}, [10], 20, resamples=200, seed=3) == (rows, comparisons)
    row = next(r for r in rows if r["method"] == "a" and r["metric"] == "recall@10")
    assert row["mean"] == 0.8 and row["users"] == 5 and row["ci_low"] <= 0.8 <= row["ci_high"]


def test_the_report_carries_cis_and_paired_comparisons(ml_small_dir):
    report = run_evaluation(EvalConfig(dataset=str(ml_small_dir), methods=["popularity", "itemknn"]))
    rows = {(r["method"], r["metric"]): r for r in report["rows"]}
    knn = report["groups"]["all"]["methods"]["itemknn"]["metrics"]["ndcg@10"]
    assert rows[("itemknn", "ndcg@10")]["mean"] == knn and rows[("itemknn", "ndcg@10")]["slice"] == "all"
    (cmp,) = [c for c in report["comparisons"] if c["metric"] == "ndcg@10"]
    assert (cmp["method"], cmp["baseline"]) == ("itemknn", "popularity") and cmp["ci_low"] > 0
    assert len(report["per_user_ranks"]["all"]["itemknn"]) == 610
