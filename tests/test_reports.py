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
