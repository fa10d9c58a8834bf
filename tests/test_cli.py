"""The llmrec command line on real data, through click's runner."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmrec.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("data", "candidates", "evaluate"):
        assert cmd in result.output


def test_data_prints_llamarec_counts(ml_small_dir):
    result = runner.invoke(app, ["data", str(ml_small_dir), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["cleaned"]["users"] == 610
    assert stats["cleaned"]["items_interacted"] == 3650
    assert stats["raw"]["interactions"] == 100836


def test_data_save_writes_a_folder_the_commands_read_back(tmp_path):
    saved = tmp_path / "ml-clean"
    first = runner.invoke(app, ["data", "ml-latest-small", "--save", str(saved), "--json"])
    again = runner.invoke(app, ["data", str(saved), "--json"])
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert json.loads(again.stdout)["cleaned"] == json.loads(first.stdout)["cleaned"]


def test_candidates_for_known_user_and_free_text(ml_small_dir):
    known = runner.invoke(app, ["candidates", str(ml_small_dir), "--user", "1", "--k", "5", "--json"])
    assert known.exit_code == 0, known.output
    rows = json.loads(known.stdout)["candidates"]  # progress bars go to stderr
    assert len(rows) == 5 and rows[0]["rank"] == 1
    typed = runner.invoke(
        app,
        [
            "candidates",
            str(ml_small_dir),
            "--history",
            "Toy Story (1995); Toy Story 2 (1999)",
            "--method",
            "bm25",
            "--k",
            "10",
            "--json",
        ],
    )
    assert typed.exit_code == 0, typed.output
    payload = json.loads(typed.stdout)
    titles = [r["title"] for r in payload["candidates"]]
    assert any("Toy Story 3" in t for t in titles), titles
    assert not any(t in ("Toy Story (1995)", "Toy Story 2 (1999)") for t in titles)


def test_unknown_user_is_a_clear_error(ml_small_dir):
    result = runner.invoke(app, ["candidates", str(ml_small_dir), "--user", "no-such-user"])
    assert result.exit_code == 2
    assert "no-such-user" in result.output


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "nowhere" in result.output


def test_evaluate_writes_report(ml_small_dir, tmp_path):
    result = runner.invoke(
        app, ["evaluate", str(ml_small_dir), "--methods", "popularity,bm25", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["groups"]["all"]["methods"]) == {"popularity", "bm25"}
    assert (tmp_path / "report.md").exists()


def test_recommend_without_llm_from_a_saved_retriever(ml_small_dir, tmp_path):
    saved = tmp_path / "retriever"
    fit = runner.invoke(
        app, ["candidates", str(ml_small_dir), "--retriever", "itemknn", "--save", str(saved)]
    )
    assert fit.exit_code == 0, fit.output
    args = ["recommend", str(ml_small_dir), "--user", "1", "--no-llm", "--retriever", "itemknn", "--json"]
    refit = runner.invoke(app, args)
    loaded = runner.invoke(app, [*args, "--retriever-dir", str(saved)])
    assert refit.exit_code == 0 and loaded.exit_code == 0, refit.output + loaded.output
    items = json.loads(loaded.stdout)["items"]
    assert items == json.loads(refit.stdout)["items"] and len(items) == 10
    assert [r["retriever_rank"] for r in items] == list(range(1, 11))


@pytest.mark.parametrize(
    "args, named",
    [
        (["evaluate", "ml-latest-small", "--source", "arts", "--target", "nosuch"], "source"),
        (["evaluate", "ml-latest-small", "--stage", "train"], "--stage"),
        (["recommend", "ml-latest-small", "--user", "1", "--n", "0"], "n=0"),
        (["finetune", "--lora-r", "0"], "lora_r"),
        (["evaluate", "ml-latest-small", "--out", "/dev/null/x"], "/dev/null/x"),
        (["evaluate", "ml-latest-small", "--source", "office", "--target", "office"], "target"),
        (["evaluate", "ml-latest-small", "--shuffles", "abc"], "shuffles"),
        (["evaluate", "ml-latest-small", "--cold-fraction", "5"], "cold_fraction"),
        (["evaluate", "ml-latest-small", "--ks", "0,10"], "ks"),
        (["data", "ml-latest-small", "--columns", "user=u,colour=c"], "colour"),
        (["finetune", "--learning-rate", "fast"], "--learning-rate"),
        (["candidates", "ml-latest-small", "--user", "1", "--retriever", "nope"], "nope"),
        (["data", "ml-latest-small", "--only-domain", "office"], "only_domain='office'"),
        (
            ["evaluate", "ml-latest-small", "--new-items-sample", "0.1", "--new-items-fraction", "0.2"],
            "new_items",
        ),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(args, named):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


def test_unmatched_typed_titles_are_reported():
    result = runner.invoke(
        app, ["candidates", "--history", "Toy Story (1995); A Film Nobody Made (2031)", "--retriever", "bm25"]
    )
    assert result.exit_code == 0, result.output
    assert "1 of 2 titles not in the catalog" in result.stderr and "A Film Nobody Made" in result.stderr


def test_an_unexpected_error_is_called_a_bug_with_its_traceback_kept(monkeypatch, capsys):
    import llmrec.cli

    def broken(**_):
        raise RuntimeError("boom")

    monkeypatch.setattr(llmrec.cli, "app", broken)
    with pytest.raises(SystemExit) as stop:
        llmrec.cli.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "a bug in llmrec" in err and "RuntimeError: boom" in err
    log = err.split("full traceback: ")[1].strip()
    assert "Traceback" in Path(log).read_text()
