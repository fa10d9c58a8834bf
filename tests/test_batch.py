"""`llmrec batch` on ml-latest-small: input checks, error rows, atomic chunks, manifest and
resume.

The fast tests rank without a language model (the retriever's order, or a stand-in reranker
with a known answer) and share one fitted retriever; the slow test runs the real command with
the offline default model, kills it with SIGKILL after its first chunk, resumes it, and
compares the output with an uninterrupted run's, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from llmrec.batch import OUTPUT_SCHEMA, BatchJob, ChunkRanker, read_requests
from llmrec.cli import app
from llmrec.config import RecommendConfig, load_config
from llmrec.llm.prompting import PromptTemplate
from llmrec.pipeline import Recommender

runner = CliRunner()

TYPED = ["Heat", "Casino (1995)", "A Film Nobody Made (2031)"]
"""A new user's typed titles: two in the catalog, one not (kept as text)."""
ROWS = (
    [{"request_id": f"u{u}", "user": u} for u in range(1, 9)]
    + [{"request_id": "typed", "history": TYPED}, {"request_id": "bad", "user": 999999}]
    + [{"request_id": "empty"}]
)
N = 5


def write_csv(path: Path, rows=ROWS) -> Path:
    lines = ["request_id,user,history"]
    for row in rows:
        history = "; ".join(row.get("history", []))
        lines.append(f'{row["request_id"]},{row.get("user", "")},"{history}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config_file(ml_small_dir, tmp_path_factory) -> Path:
    """Retriever only (itemknn fits in a second), as the service's fast tests."""
    path = tmp_path_factory.mktemp("batch") / "batch.yaml"
    values = {"dataset": str(ml_small_dir), "retriever": "itemknn", "num_candidates": 10, "n": N}
    path.write_text(yaml.safe_dump({**values, "no_llm": True}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ranker(config_file) -> ChunkRanker:
    return ChunkRanker.build(load_config(RecommendConfig, config_file))


@pytest.fixture(autouse=True)
def one_fit(ranker, monkeypatch):
    """Every job of these tests ranks with the module's fitted retriever (no refit per run)."""
    monkeypatch.setattr(ChunkRanker, "build", classmethod(lambda cls, config: ranker))


def with_reranker(ranker: ChunkRanker, reranker) -> ChunkRanker:
    rec = ranker.recommender
    recommender = Recommender(rec.generator, reranker, rec.num_candidates, rec.retriever_weight)
    return ChunkRanker(dataclasses.replace(ranker.parts, recommender=recommender))


class ReversingReranker:
    """A stand-in LLM with a known answer: it prefers the retriever's last candidate."""

    def __init__(self, fail: bool = False) -> None:
        self.template = PromptTemplate.load("listwise_compact")
        self.fail = fail
        self.calls: list[int] = []

    def score(self, histories, candidates, params=None, evidence=None):
        self.calls.append(len(histories))
        if self.fail:
            raise RuntimeError("injected LLM failure")
        return [np.arange(len(c), dtype=np.float64) for c in candidates]


def batch(*args: str):
    return runner.invoke(app, ["batch", *map(str, args)])


def test_batch_ranks_csv_and_jsonl_with_error_rows_chunks_and_manifest(config_file, tmp_path):
    outputs = {}
    for kind, write in (("csv", write_csv), ("jsonl", write_jsonl)):
        source = write(tmp_path / f"requests.{kind}")
        out = tmp_path / f"{kind}.parquet"
        summary_file = tmp_path / f"{kind}-summary.json"
        result = batch(
            source, "--config", config_file, "--out", out, "--chunk-size", 4, "--summary", summary_file
        )
        assert result.exit_code == 0, result.output
        assert "11 requests in 3 chunks (3 computed, 0 skipped)" in result.stdout
        summary = json.loads(summary_file.read_text())
        assert summary["errors"] == 2 and summary["fallbacks"] == {"llm_disabled": 9}
        assert summary["users_computed"] == 11 and summary["users_per_s"] > 0
        outputs[kind] = table = pq.read_table(out)
        assert table.schema.names == OUTPUT_SCHEMA.names
        rows = table.to_pylist()
        by_request = {
            rid: [r for r in rows if r["request_id"] == rid]
            for rid in dict.fromkeys(table["request_id"].to_pylist())
        }
        assert list(by_request) == [row["request_id"] for row in ROWS]  # input order
        for rid, ranked in by_request.items():
            if rid in ("bad", "empty"):
                (row,) = ranked
                assert row["rank"] is None and row["item_id"] is None and row["reranked"] is False
                continue
            assert [r["rank"] for r in ranked] == list(range(1, N + 1))
            assert [r["retriever_rank"] for r in ranked] == list(range(1, N + 1))  # no LLM: its order
            assert all(r["reason"] == "llm_disabled" and r["error"] is None for r in ranked)
            assert all(r["user"] == (None if rid == "typed" else rid[1:]) for r in ranked)
        # a bad row names its row, column and value; the job went on
        assert by_request["bad"][0]["error"].startswith(
            "row 9 (request_id 'bad'): user='999999': unknown user"
        )
        assert by_request["empty"][0]["error"].startswith(
            "row 10 (request_id 'empty'): user=None: give exactly one"
        )
        # atomic chunks and the manifest beside them; no temporary file left behind
        parts = out.with_name(out.name + ".parts")
        assert sorted(p.name for p in parts.iterdir()) == [
            ".lock",
            "manifest.json",
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet",
        ]
        assert not list(tmp_path.glob(".*.tmp"))
        manifest = json.loads((parts / "manifest.json").read_text())
        assert manifest["fingerprint"] == summary["fingerprint"] and manifest["chunks"] == 3
        assert manifest["chunk_size"] == 4 and manifest["config"]["retriever"] == "itemknn"
        assert [e["requests"] for e in manifest["finished"].values()] == [4, 4, 3]
        assert manifest["output"]["file"] == str(out)
        assert sum(pq.read_table(parts / e["file"]).num_rows for e in manifest["finished"].values()) == len(
            rows
        )
    # titles separated by ';' (CSV) or given as a list (JSONL): the same requests, the same lists
    assert outputs["csv"].equals(outputs["jsonl"])


def test_a_rerun_skips_finished_chunks_and_another_job_is_refused(config_file, tmp_path):
    source = write_csv(tmp_path / "requests.csv")
    out = tmp_path / "ranked.parquet"
    first = batch(source, "--config", config_file, "--out", out, "--chunk-size", 4)
    written = out.read_bytes()
    again = batch(source, "--config", config_file, "--out", out, "--chunk-size", 4)
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert "(0 computed, 3 skipped)" in again.stdout and out.read_bytes() == written
    # another list length, chunk size or input: refused, naming what differs, output untouched
    for args, named in (
        (["-n", 3, "--chunk-size", 4], "n: 5 -> 3"),
        (["--chunk-size", 2], "chunk size 4 vs 2"),
    ):
        refused = batch(source, "--config", config_file, "--out", out, *args)
        assert refused.exit_code == 2 and named in refused.output and "--overwrite" in refused.output, (
            refused.output
        )
    write_csv(source, ROWS[:5])
    refused = batch(source, "--config", config_file, "--out", out, "--chunk-size", 4)
    assert refused.exit_code == 2 and "the input's bytes differ" in refused.output, refused.output
    assert out.read_bytes() == written
    replaced = batch(source, "--config", config_file, "--out", out, "--chunk-size", 4, "--overwrite")
    assert replaced.exit_code == 0 and "5 requests in 2 chunks (2 computed" in replaced.stdout, (
        replaced.output
    )
    # an existing file that no batch job wrote is not replaced without --overwrite
    other = tmp_path / "other.parquet"
    other.write_bytes(b"not ours")
    refused = batch(source, "--config", config_file, "--out", other)
    assert refused.exit_code == 2 and "no manifest" in refused.output and other.read_bytes() == b"not ours"
    assert not other.with_name("other.parquet.parts").exists()


@pytest.mark.parametrize(
    "name, text, named",
    [
        ("requests.txt", "user\n1\n", "unsupported input extension '.txt'"),
        ("requests.csv", "user,colour\n1,red\n", "column: 'colour'"),
        ("requests.csv", "request_id\nx\n", "column: 'user'"),
        ("requests.jsonl", '{"user": 1}\n{"user": 2\n', "line 2 is not valid JSON"),
        ("requests.jsonl", '{"user": 1}\n{"users": 2}\n', "column: 'users'"),
        ("requests.csv", "user\n", "no rows"),
    ],
)
def test_bad_input_files_fail_before_any_work(config_file, tmp_path, monkeypatch, name, text, named):
    def no_work(cls, config):
        raise AssertionError("data or model loaded before the input was checked")

    monkeypatch.setattr(ChunkRanker, "build", classmethod(no_work))
    source = tmp_path / name
    source.write_text(text, encoding="utf-8")
    result = batch(source, "--config", config_file, "--out", tmp_path / "out.parquet")
    assert result.exit_code == 2, result.output
    assert named in result.output and str(source) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.parquet.parts").exists()


def test_an_interrupted_job_resumes_at_its_first_missing_chunk(config_file, tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "requests.jsonl")
    config = load_config(RecommendConfig, config_file)
    reference = BatchJob(source, tmp_path / "reference.parquet", config, chunk_size=3).run(progress=False)
    out = tmp_path / "ranked.parquet"
    real_rank, ranked = ChunkRanker.rank, []

    def killed_in_second_chunk(self, requests):
        if ranked:
            raise KeyboardInterrupt
        ranked.append(len(requests))
        return real_rank(self, requests)

    monkeypatch.setattr(ChunkRanker, "rank", killed_in_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        BatchJob(source, out, config, chunk_size=3).run(progress=False)
    parts = out.with_name(out.name + ".parts")
    manifest = json.loads((parts / "manifest.json").read_text())
    assert list(manifest["finished"]) == ["00000"] and not out.exists()
    (parts / ".part-00001.parquet.x1y2.tmp").write_bytes(b"half a chunk")  # as a SIGKILL leaves it
    monkeypatch.setattr(ChunkRanker, "rank", real_rank)
    resumed = BatchJob(source, out, config, chunk_size=3).run(progress=False)
    assert (resumed.chunks_skipped, resumed.chunks_computed, resumed.users_computed) == (1, 3, 8)
    assert out.read_bytes() == Path(reference.output).read_bytes()
    assert not list(parts.glob(".*.tmp"))
    assert (
        (resumed.errors, resumed.fallbacks)
        == (reference.errors, reference.fallbacks)
        == (2, {"llm_disabled": 9})
    )
    # a damaged chunk file is computed again, not combined
    (parts / "part-00002.parquet").write_bytes(b"damaged")
    repaired = BatchJob(source, out, config, chunk_size=3).run(progress=False)
    assert (repaired.chunks_skipped, repaired.chunks_computed) == (3, 1)
    assert out.read_bytes() == Path(reference.output).read_bytes()
    # --no-resume recomputes every chunk, to the same bytes
    fresh = BatchJob(source, out, config, chunk_size=3).run(resume=False, progress=False)
    assert fresh.chunks_computed == 4 and out.read_bytes() == Path(reference.output).read_bytes()


def test_a_chunk_is_scored_in_one_llm_call_and_a_failed_call_keeps_the_retriever_order(ranker, tmp_path):
    requests = read_requests(write_csv(tmp_path / "requests.csv"))
    reranker = ReversingReranker()
    table, stats = with_reranker(ranker, reranker).rank(requests)
    assert reranker.calls == [9]  # the chunk's nine valid rows, in one call
    assert stats == {"requests": 11, "rows": 9 * N + 2, "reranked": 9, "fallbacks": {}, "errors": 2}
    rows = [r for r in table.to_pylist() if r["error"] is None]
    assert all(r["reranked"] and r["reason"] is None for r in rows)
    assert [r["retriever_rank"] for r in rows[:N]] == [10, 9, 8, 7, 6]  # the stand-in's order
    failing = ReversingReranker(fail=True)
    table, stats = with_reranker(ranker, failing).rank(requests)
    assert failing.calls == [9] and stats["fallbacks"] == {"llm_error": 9} and stats["reranked"] == 0
    rows = [r for r in table.to_pylist() if r["error"] is None]
    assert all(not r["reranked"] and r["reason"] == "llm_error" for r in rows)
    assert [r["retriever_rank"] for r in rows[:N]] == [1, 2, 3, 4, 5]


def test_a_second_job_on_the_same_output_is_refused(config_file, tmp_path):
    import fcntl

    source = write_csv(tmp_path / "requests.csv")
    out = tmp_path / "ranked.parquet"
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    with (parts / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = batch(source, "--config", config_file, "--out", out)
    assert result.exit_code == 2 and "another llmrec batch" in result.output, result.output


# --- slow: the real command with the offline default model, killed and resumed ---------------


def start_batch(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmrec.cli", "batch", *map(str, args), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def first_chunk_recorded(parts: Path) -> bool:
    """The first chunk file is written and in the manifest (a kill between the two would
    only make the resumed run compute it again)."""
    manifest = parts / "manifest.json"
    return manifest.exists() and "00000" in json.loads(manifest.read_text())["finished"]


@pytest.mark.slow
def test_a_killed_and_resumed_llm_job_writes_what_an_uninterrupted_one_writes(
    ml_small_dir, smollm_dir, tmp_path
):
    """32 ml-latest-small users, the LLM stage on (SmolLM2-135M, transformers), 4
    chunks of 8: SIGKILL once the first chunk is written, resume, compare byte for byte."""
    config = tmp_path / "llm.yaml"
    settings = {
        "dataset": str(ml_small_dir),
        "model": str(smollm_dir),
        "template": "listwise_compact",
        "num_candidates": 10,
        "n": N,
        "dtype": "auto",  # bf16 where the CPU has it natively (deterministic too), else float32
        "batch_size": 8,
    }
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    source = tmp_path / "users.csv"
    source.write_text("user\n" + "".join(f"{u}\n" for u in range(1, 33)), encoding="utf-8")
    common = ["--config", config, "--chunk-size", 8]

    whole = start_batch(source, *common, "--out", tmp_path / "whole.parquet")
    output = whole.communicate(timeout=600)[0]
    assert whole.returncode == 0, output

    out = tmp_path / "killed.parquet"
    parts = out.with_name(out.name + ".parts")
    killed = start_batch(source, *common, "--out", out)
    deadline = time.monotonic() + 600
    while not first_chunk_recorded(parts) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    output = killed.communicate(timeout=60)[0]
    assert killed.returncode == -signal.SIGKILL, output  # killed while ranking, not finished
    assert (parts / "part-00000.parquet").exists() and not out.exists()

    summary_file = tmp_path / "summary.json"
    resumed = start_batch(source, *common, "--out", out, "--summary", summary_file)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    summary = json.loads(summary_file.read_text())
    assert summary["chunks_skipped"] >= 1 and summary["chunks_computed"] >= 1, summary
    assert summary["reranked"] == 32 and summary["fallbacks"] == {} and summary["errors"] == 0
    assert out.read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    table = pq.read_table(out)
    assert table.num_rows == 32 * N and all(table["reranked"].to_pylist())
