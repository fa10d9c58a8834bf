"""The committed suite reports: the README's tables are generated from them, and they are
complete reports of the suites as committed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "eval" / "reports"
sys.path.insert(0, str(REPO / "eval"))

import readme_tables  # noqa: E402


def test_readme_tables_are_generated_from_the_committed_reports():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme_tables.MARKER.search(readme), "README has no generated tables"
    assert readme_tables.render(readme, REPORTS) == readme, "run: python eval/readme_tables.py"


@pytest.mark.parametrize("suite", sorted(p.name for p in REPORTS.iterdir() if (p / "report.json").is_file()))
def test_committed_reports_match_their_suite_files(suite):
    report = json.loads((REPORTS / suite / "report.json").read_text(encoding="utf-8"))
    settings = yaml.safe_load((REPO / "eval" / f"{suite}.yaml").read_text(encoding="utf-8"))
    assert report["complete"] and report["suite"]["name"] == settings["name"]
    assert list(report["runs"]) == [r["name"] for r in settings.get("runs", [{"name": "all"}])]
    for body in report["runs"].values():
        assert body["rows"] and body["comparisons"] and body["config"]["seed"] == settings["seed"]
        assert (REPORTS / suite / "report.md").is_file()


# OpenBLAS kernels the committed reports were made with (Intel AVX-512). MF's float32 ALS sums
# in another order under other kernels (AMD Zen and AVX2-only CPUs get the Haswell ones), which
# moves a user's rank or two; any AVX-512 CPU can be given these kernels by OPENBLAS_CORETYPE.
REPORT_OPENBLAS = {"SkylakeX", "Cooperlake", "SapphireRapids"}
_FRESH_ROWS = """
import json, sys
from llmrec.evaluation.suite import load_suite, run_suite
report = run_suite(load_suite(sys.argv[1], {"rerank": False}))
open(sys.argv[2], "w", encoding="utf-8").write(json.dumps(report))
"""


def _openblas_architectures() -> set[str]:
    import numpy  # noqa: F401  (loads both OpenBLAS builds, so threadpoolctl sees them)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    return {i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"}


def _cpu_has_avx512() -> bool:
    """The CPU can run OpenBLAS's SkylakeX kernels."""
    from llmrec.llm.models import cpu_flags

    return {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= cpu_flags()


def test_the_retrieval_rows_of_the_committed_ml_latest_small_report_reproduce_exactly(tmp_path):
    """The LLM rows take ~10 minutes (`llmrec evaluate eval/ml-latest-small.yaml --check
    eval/reports/ml-latest-small` checks them); every retriever row, CI and comparison is
    recomputed here (in a fresh process, with the report's OpenBLAS kernels where the CPU can
    run them) and must match to the last digit. Without AVX-512 it must match within 0.02."""
    import subprocess

    env = dict(os.environ)
    report_kernels = _openblas_architectures() <= REPORT_OPENBLAS
    exact = report_kernels or _cpu_has_avx512()
    if not report_kernels and exact:
        env["OPENBLAS_CORETYPE"] = "SkylakeX"
    out = tmp_path / "fresh.json"
    suite = REPO / "eval" / "ml-latest-small.yaml"
    subprocess.run([sys.executable, "-c", _FRESH_ROWS, str(suite), str(out)], cwd=REPO, env=env, check=True)
    committed = json.loads((REPORTS / "ml-latest-small" / "report.json").read_text(encoding="utf-8"))
    fresh = json.loads(out.read_text(encoding="utf-8"))
    methods = set(committed["runs"]["all"]["config"]["methods"])
    for key in ("rows", "comparisons"):
        want = [r for r in committed[key] if r["method"] in methods]
        got = [r for r in fresh[key] if r["method"] in methods]
        assert want and len(got) == len(want)
        for g, w in zip(got, want):
            assert g == w if exact else g == pytest.approx(w, abs=0.02)


def test_learning_curve_rows_table_and_plot(tmp_path):
    import plot_curve  # eval/ script

    def row(group, method, mean):
        return {
            "slice": group,
            "method": method,
            "metric": "ndcg@10",
            "mean": mean,
            "ci_low": mean - 0.01,
            "ci_high": mean + 0.01,
            "users": 100 if group == "warm" else 40,
        }

    names = ["base, 0 office users (zero-shot)", "base + 16 office users", "arts-tuned + 64 office users"]
    rows, comparisons = [], []
    for group in ("warm", "cold"):
        rows += [row(group, "fused", 0.10), row(group, "popularity", 0.02)]
        for i, name in enumerate(names):
            rows.append(row(group, f"fused + {name}", 0.09 + 0.01 * i))
            comparisons.append(
                {
                    "slice": group,
                    "method": f"fused + {name}",
                    "baseline": "fused",
                    "metric": "ndcg@10",
                    "diff": 0.01 * i - 0.01,
                    "ci_low": 0.01 * i - 0.015,
                    "ci_high": 0.01 * i - 0.005,
                    "p_value": 0.01,
                }
            )
    report = {"runs": {"a->b": {"config": {"retriever": "fused"}, "rows": rows, "comparisons": comparisons}}}
    retriever, got = plot_curve.curve_rows(report)
    assert retriever == "fused"
    warm = [(r["start"], r["n"]) for r in got if r["group"] == "warm"]
    assert warm == [("retriever", -1), ("arts-tuned", 64), ("base", 0), ("base", 16)]  # popularity left out
    text = plot_curve.table(retriever, got)
    assert (
        "| warm (100) | base | 0 | 0.0900 [0.0800, 0.1000] | **-0.0100** [-0.0150, -0.0050] | 0.010 |" in text
    )
    assert "| cold (40) | arts-tuned | 64 | 0.1100" in text and "+0.0100** [+0.0050, +0.0150]" in text
    out = tmp_path / "curve.png"
    plot_curve.plot(retriever, got, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curve.parse_point("fused + base + 16 office users", "fused") == ("base", 16)
    assert plot_curve.parse_point("fused + SmolLM2-135M zero-shot", "fused") is None


def test_cold_start_grid_report_marks_the_validation_choice_and_renders_its_table():
    import exp_cold  # eval/ script

    from llmrec.candidates import CandidateGenerator

    settings = exp_cold.grid()
    assert len(settings) == 21 and all(isinstance(make(), CandidateGenerator) for make in settings.values())
    results = json.loads((REPORTS / "cold-grid-arts-office.json").read_text(encoding="utf-8"))
    for run in results["runs"].values():
        assert list(run["rows"]) == list(settings)  # the committed grid is this script's grid
        valid = {name: row["valid"]["recall@20"] for name, row in run["rows"].items()}
        assert valid[run["chosen_on_validation"]] == max(valid.values())
        mean, low, high = run["rows"][run["chosen_on_validation"]]["test"]["recall@20"]
        assert low <= mean <= high
        learned = run["learned"]
        assert learned["features"] == ["position", *exp_cold.LEARNED, "popularity", "embedding"]
        assert all(setting in settings for setting in exp_cold.LEARNED.values())
        fit = learned["fit_on_validation"]
        assert fit["l2"] in exp_cold.PENALTIES and len(fit["weights"]) == len(learned["features"])
    committed = (REPORTS / "cold-grid-arts-office.md").read_text(encoding="utf-8")
    assert exp_cold.markdown(results) == committed


def test_cold_start_pool_is_the_base_generators_order(arts_office_dir, monkeypatch):
    """The learned combination's pool: the grid's ranks of its base generator, each target at its
    own position, so the position feature alone gives back exactly that generator's ranks."""
    import exp_cold

    from llmrec.candidates.crossdomain import CrossDomainUserKNNGenerator
    from llmrec.candidates.popularity import PopularityGenerator
    from llmrec.data import clean, cross_domain_split, load_dataset
    from llmrec.evaluation.combiner import combined_ranks

    cd = cross_domain_split(clean(load_dataset(arts_office_dir)), "arts", "office", cold_fraction=0.2, seed=0)
    base = exp_cold.LEARNED["cross-userknn"]
    other = "cross-userknn decay=1 power=1"
    monkeypatch.setattr(exp_cold, "LEARNED", {"cross-userknn": base, "cross-userknn binary linear": other})
    settings = {
        "popularity": PopularityGenerator,
        base: CrossDomainUserKNNGenerator,
        other: lambda: CrossDomainUserKNNGenerator(recency_decay=1.0, similarity_power=1.0),
    }
    ranks, generators = exp_cold.cold_stage(cd, "test", settings)
    # The embedding feature's slot takes popularity here: this test is about the pool, not features.
    data = exp_cold.pool_features(cd, "test", generators, generators["popularity"])
    assert np.array_equal(data["ranked"].ranks, ranks[base])
    assert np.array_equal(data["sel"], np.flatnonzero(ranks[base] <= exp_cold.POOL))
    assert len(data["sel"]) > 100
    assert np.array_equal(combined_ranks(data, ["position"], np.array([1.0])), ranks[base])
    reordered = combined_ranks(data, ["popularity"], np.array([1.0]))
    assert not np.array_equal(reordered, ranks[base])  # another feature moves targets in the pool
    assert np.array_equal(reordered > exp_cold.POOL, ranks[base] > exp_cold.POOL)  # never out of it
