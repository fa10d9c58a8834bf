"""eval/ablation.py: the item-token LM's rows, read from its committed reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "eval"))

import ablation  # noqa: E402

SEED1 = ROOT / "eval/reports/item-tokens-seed1-ml-latest-small.json"


def test_item_token_rows_carry_the_reports_numbers_and_what_validation_chose():
    report = json.loads(SEED1.read_text(encoding="utf-8"))
    rows = ablation.item_token_rows(SEED1)
    assert [r["row"]["combiner"] for r in rows] == ["alone", "score fusion"] * len(report["evaluation"])
    best = report["evaluation"]["best epoch (9)"]
    assert rows[0]["fit_on_validation"] == "epoch 9"
    assert rows[1]["fit_on_validation"] == f"epoch 9, w={best['fusion_weight']:g}"
    assert rows[1]["test"] == best["rows"]["score fusion, test"]
    assert rows[0]["row"]["training"] == "item-token LM, seed 1"


def test_a_table_of_item_token_reports_alone_and_a_refusal_of_other_json(tmp_path):
    out = tmp_path / "ablation.json"
    assert ablation.main(["--only-suites", "--item-token-reports", str(SEED1), "--out", str(out)]) == 0
    table = out.with_suffix(".md").read_text(encoding="utf-8")
    assert table.count("| fused-seq | - | item-token LM, seed 1 |") == 4
    other = tmp_path / "other.json"
    other.write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(SystemExit, match="not a report of eval/exp_item_tokens.py"):
        ablation.item_token_rows(other)
    with pytest.raises(SystemExit, match="no rows"):
        ablation.main(["--only-suites", "--out", str(out)])
