"""Evaluation suites: bad files fail before any work, re-runs are served from the cache and
reproduce the report exactly, interrupted LLM scoring resumes, slices and beyond-accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmrec.data.catalog import History
from llmrec.errors import ConfigError
from llmrec.evaluation.cache import EvalCache
from llmrec.evaluation.config import EvalConfig
from llmrec.evaluation.slices import beyond_accuracy, history_bins, user_slices
from llmrec.evaluation.suite import comparable, differences, load_suite, run_suite
from llmrec.hashing import digest

REPO = Path(__file__).resolve().parents[1]
SMALL = {"name": "small", "dataset": "ml-latest-small", "methods": ["popularity", "itemknn"], "bootstrap": 50}


def write_suite(tmp_path: Path, **values) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **values}), encoding="utf-8")
    return path


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmrec.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"metrix": ["ndcg@10"]}, ["metrix", "metrics"]),  # unknown key: named, valid ones listed
        ({"dataset": "no/such/folder"}, ["dataset", "no/such/folder"]),
        ({"metrics": ["ndcg@10", "cand_recall@50"]}, ["cand_recall@50", "num_candidates=20"]),
        ({"metrics": ["hitrate@10"]}, ["hitrate@10", "ndcg@K"]),
        ({"slices": ["by_moon"]}, ["by_moon", "history_length"]),
        ({"rerankers": [{"name": "a", "temperature": 0.5}]}, ["rerankers[0]", "temperature", "template"]),
        ({"rerankers": [{"name": "a"}], "metrics": ["ndcg@50"]}, ["ndcg@50", "LLM stage"]),
        ({"runs": [{"name": "x", "k_core": "five"}]}, ["k_core", "five"]),
        # an ensemble names two or more earlier entries with a model, and sets no model itself
        (
            {"rerankers": [{"name": "a"}, {"name": "e", "ensemble": ["a", "b"]}]},
            ["rerankers[1].ensemble", "b"],
        ),
        (
            {"rerankers": [{"name": "a"}, {"name": "e", "ensemble": ["a"]}]},
            ["rerankers[1].ensemble", "two or more"],
        ),
        (
            {
                "rerankers": [
                    {"name": "a"},
                    {"name": "b"},
                    {"name": "e", "ensemble": ["a", "b"], "adapter": "x"},
                ]
            },
            ["rerankers[2]", "adapter"],
        ),
        ({"ensemble": ["a", "b"], "rerankers": [{"name": "a"}]}, ["ensemble", "rerankers entry"]),
    ],
)
def test_bad_suite_files_fail_before_any_work_naming_the_key(tmp_path, values, names):
    with pytest.raises(ConfigError) as err:
        load_suite(write_suite(tmp_path, **values))
    message = str(err.value)
    for name in names:
        assert name in message


def test_a_bad_suite_file_exits_2_on_the_command_line_before_loading_data(tmp_path):
    proc = cli("evaluate", str(write_suite(tmp_path, metrics=["ndcg@10", "cand_recall@99"])))
    assert proc.returncode == 2
    assert "cand_recall@99" in proc.stderr and "Traceback" not in proc.stderr
    assert "users" not in proc.stdout  # nothing ran


def test_a_suite_rerun_is_served_from_the_cache_and_reproduces_the_report(tmp_path, ml_small_dir):
    suite = load_suite(
        write_suite(tmp_path, dataset=str(ml_small_dir), slices=["history_length", "new_items"])
    )
    suite.cache_dir = str(tmp_path / "cache")
    first = json.loads(json.dumps(run_suite(suite), default=float))
    second = json.loads(json.dumps(run_suite(suite), default=float))
    assert first["cache"]["candidates"] == {**first["cache"]["candidates"], "hits": 0, "misses": 2}
    assert second["cache"]["candidates"]["hits"] == 2 and second["cache"]["candidates"]["misses"] == 0
    assert "generators" not in second["cache"]  # nothing refit: candidate lists were enough
    assert comparable(first) == comparable(second)
    assert differences(second, first) == []
    rows = {(r["slice"], r["method"], r["metric"]) for r in first["rows"]}
    assert ("all", "itemknn", "ndcg@10") in rows
    assert any(s.startswith("new items") for s, _, _ in rows)
    # a changed generator setting recomputes that generator only
    suite.generator_params = {"itemknn": {"shrink": 5.0}}
    third = run_suite(suite)
    assert third["cache"]["candidates"]["hits"] == 1 and third["cache"]["candidates"]["misses"] == 1
    assert differences(third, first) != []


def test_other_blas_kernels_refit_rather_than_reuse_the_cache(tmp_path, ml_small_dir, monkeypatch):
    """MF's float32 ALS sums in another order under other OpenBLAS kernels (AMD Zen gets
    Haswell's unless OPENBLAS_CORETYPE says otherwise): a cache filled under one set of kernels
    must not serve a run under another."""
    import llmrec.evaluation.experiment as experiment
    from llmrec.evaluation.cache import blas_kernels

    assert blas_kernels() and all(":" in k for k in blas_kernels())  # e.g. "openblas:SkylakeX"
    suite = load_suite(write_suite(tmp_path, dataset=str(ml_small_dir), methods=["mf"]))
    suite.cache_dir = str(tmp_path / "cache")
    run_suite(suite)
    again = run_suite(suite)["cache"]["candidates"]
    assert again["hits"] == 1 and again["misses"] == 0
    monkeypatch.setattr(experiment, "blas_kernels", lambda: ("openblas:SomeOtherCore",))
    other = run_suite(suite)
    assert other["cache"]["candidates"]["hits"] == 0 and other["cache"]["candidates"]["misses"] == 1


def test_check_flag_passes_on_a_rerun_and_fails_on_a_changed_report(tmp_path):
    path = write_suite(tmp_path)
    out = tmp_path / "report"
    assert cli("evaluate", str(path), "--out", str(out)).returncode == 0
    proc = cli("evaluate", str(path), "--out", str(tmp_path / "again"), "--check", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "identical" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    report["rows"][0]["mean"] += 0.01
    (out / "report.json").write_text(json.dumps(report))
    proc = cli("evaluate", str(path), "--out", str(tmp_path / "third"), "--check", str(out))
    assert proc.returncode == 1 and "rows[0]/mean" in proc.stderr
    assert (out.parent / "again" / "report-all.png").is_file()


def test_chunked_scores_resume_after_an_interruption(tmp_path):
    cache = EvalCache(tmp_path)
    calls: list[tuple[int, int]] = []

    def compute(lo: int, hi: int) -> np.ndarray:
        calls.append((lo, hi))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while scoring the third chunk
        return np.arange(lo, hi, dtype=float)[:, None] * np.ones((1, 2))

    with pytest.raises(KeyboardInterrupt):
        cache.chunked_rows("llm", "k", 10, 3, compute)
    calls.clear()
    rows, _ = cache.chunked_rows("llm", "k", 10, 3, compute)
    assert calls == [(6, 9), (9, 10)]  # the two stored chunks were not scored again
    np.testing.assert_array_equal(rows[:, 0], np.arange(10))
    calls.clear()
    EvalCache(tmp_path).chunked_rows("llm", "k", 10, 3, compute)
    assert calls == []


def test_cache_keys_change_with_any_input():
    a = np.arange(5)
    assert digest("x", a, 1) == digest("x", a.copy(), 1)
    assert digest("x", a, 1) != digest("x", a, 2)
    assert digest("x", a, 1) != digest("x", a[::-1], 1)
    assert digest("x", [a, a]) != digest("x", [a, a + 1])


def test_slices_and_beyond_accuracy():
    assert [b[0] for b in history_bins([5, 20])] == ["history<=5", "history 6-20", "history>20"]
    config = EvalConfig(slices=["history_length", "new_items"], history_bins=[2], new_item_max_train=3)
    histories = [History(items=np.arange(n)) for n in (1, 2, 3, 4)]
    counts = np.array([0, 5, 2, 9])
    masks = user_slices(config, histories, np.array([0, 1, 2, 3]), counts)
    assert masks["history<=2"].tolist() == [True, True, False, False]
    assert masks["history>2"].tolist() == [False, False, True, True]
    assert masks["new items (<3 train interactions)"].tolist() == [True, False, True, False]
    lists = {"m": np.array([[0, 1], [0, 3]])}
    got = {
        b["metric"]: b["value"] for b in beyond_accuracy(lists, counts, 10, ["coverage@2", "popularity@1"])
    }
    assert got["coverage@2"] == pytest.approx(0.3)  # items 0, 1, 3 of 10
    assert got["popularity@1"] == pytest.approx(0.0)  # item 0 both times


@pytest.mark.slow
def test_llm_scores_are_cached_and_a_rerun_loads_no_model(tmp_path, ml_small_dir, smollm_dir):
    from llmrec.evaluation.experiment import run_evaluation

    config = EvalConfig(
        dataset=str(ml_small_dir),
        methods=["fused"],
        max_users=40,
        bootstrap=50,
        rerankers=[
            {"name": "zs", "template": "listwise_compact", "dtype": "float32", "fusion_weights": [1.0]},
        ],
        cache_dir=str(tmp_path),
    )
    first = json.loads(json.dumps(run_evaluation(config), default=float))
    second = json.loads(json.dumps(run_evaluation(config), default=float))
    assert "model_load_seconds" in first["timings"] and "model_load_seconds" not in second["timings"]
    assert second["cache"]["llm-scores"]["misses"] == 0 and second["cache"]["llm-scores"]["hits"] == 2
    assert differences(second, first) == []
    labels = list(first["groups"]["all"]["rerank"]["rows"])
    assert labels[0] == "fused + zs" and "fused with retriever order" in labels[1]
    # another template is another key: scored anew, the retrieval part still cached
    config.rerankers = [{"name": "zs", "template": "listwise", "dtype": "float32"}]
    third = run_evaluation(config)
    assert third["cache"]["llm-scores"]["misses"] == 1 and third["cache"]["candidates"]["misses"] == 0


@pytest.mark.slow
def test_an_ensemble_entry_reads_its_members_scores_and_loads_no_model_of_its_own(
    tmp_path, ml_small_dir, smollm_dir
):
    from llmrec.evaluation.experiment import run_evaluation

    member = {"template": "listwise_compact", "dtype": "float32", "fusion_weights": [1.0]}
    config = EvalConfig(
        dataset=str(ml_small_dir),
        methods=["fused"],
        max_users=40,
        bootstrap=50,
        rerankers=[
            {"name": "a", **member},
            {"name": "b", **member, "template": "listwise"},
            {"name": "a twice", "ensemble": ["a", "a"], "fusion_weights": [1.0]},
            {"name": "a+b", "ensemble": ["a", "b"], "fusion_weights": [1.0]},
        ],
        cache_dir=str(tmp_path),
    )
    report = json.loads(json.dumps(run_evaluation(config), default=float))
    rerank = report["groups"]["all"]["rerank"]
    rows = rerank["rows"]
    # two models scored on test and on validation; the ensembles only read the cache
    assert report["cache"]["llm-scores"]["misses"] == 4
    assert rerank["rerankers"]["a+b"] == {"ensemble": ["a", "b"]}
    # a reranker averaged with itself ranks exactly as it does alone
    assert rows["fused + a twice"]["metrics"] == rows["fused + a"]["metrics"]
    assert rows["fused + a+b"]["prompts"] == rows["fused + a"]["prompts"] + rows["fused + b"]["prompts"]
