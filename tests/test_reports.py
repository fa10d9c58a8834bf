"""The committed suite reports: the README's tables are generated from them, and they are
complete reports of the suites as committed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def test_the_retrieval_rows_of_the_committed_ml_latest_small_report_reproduce_exactly(monkeypatch):
    """The LLM rows take ~10 minutes (`llmrec evaluate eval/ml-latest-small.yaml --check
    eval/reports/ml-latest-small` checks them); every retriever row, CI and comparison is
    recomputed here and must match to the last digit."""
    from llmrec.evaluation.suite import load_suite, run_suite

    monkeypatch.chdir(REPO)
    committed = json.loads((REPORTS / "ml-latest-small" / "report.json").read_text(encoding="utf-8"))
    fresh = json.loads(
        json.dumps(run_suite(load_suite(REPO / "eval" / "ml-latest-small.yaml", {"rerank": False})))
    )
    methods = set(committed["runs"]["all"]["config"]["methods"])
    for key in ("rows", "comparisons"):
        want = [r for r in committed[key] if r["method"] in methods]
        assert want and [r for r in fresh[key] if r["method"] in methods] == want


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
