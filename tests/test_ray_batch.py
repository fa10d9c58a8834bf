"""`llmrec ray-batch` (llmrec.ray_batch) on a local Ray cluster: the rows `llmrec batch` writes.

The fast tests check the input before Ray starts, the missing-Ray message and the GPU
configuration (Ray's vLLM integration) up to the device boundary: the processor, its engine
stage (one GPU per engine), the per-prompt requests and the reading of the engine's output are
built and checked on a CPU; no engine starts. The slow tests start a local Ray cluster and rank
ml-latest-small users on two workers, without and with the LLM stage (the offline default
model), against `llmrec batch` on the same input and settings; and the staged route (prompts,
scoring, ordering as Ray Data stages) on one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from llmrec.batch import BatchJob
from llmrec.cli import app
from llmrec.config import RecommendConfig, load_config
from llmrec.errors import DataError

runner = CliRunner()

N = 5
ROWS = (
    [{"request_id": f"u{u}", "user": u} for u in range(1, 12)]
    + [{"request_id": "typed", "history": ["Heat", "Casino (1995)", "A Film Nobody Made (2031)"]}]
    + [{"request_id": "bad", "user": 999999}, {"request_id": "empty"}]
)
"""Known users, a typed history, an unknown user and a row with neither: as test_batch."""


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (3 logical CPUs: two workers and the reading tasks),
    shut down at the end."""
    ray = pytest.importorskip("ray", reason="Ray Data not installed: pip install 'llmrec[ray]'")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def write_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({"num_candidates": 10, "n": N, **settings}), encoding="utf-8")
    return path


def ray_batch(*args):
    return runner.invoke(app, ["ray-batch", *map(str, args)])


# --- fast: before Ray, and the GPU configuration up to the device ------------------------------


def test_a_bad_input_is_refused_before_ray_or_any_data_loads(ml_small_dir, tmp_path, monkeypatch):
    import llmrec.ray_batch as ray_batch_module

    def no_cluster(*args, **kwargs):
        raise AssertionError("Ray started before the input was checked")

    monkeypatch.setattr(ray_batch_module, "ray_cluster", no_cluster)
    config = write_config(tmp_path / "c.yaml", dataset=str(ml_small_dir), no_llm=True)
    source = tmp_path / "requests.csv"
    source.write_text("user,colour\n1,red\n", encoding="utf-8")
    result = ray_batch(source, "--config", config, "--out", tmp_path / "out.parquet")
    assert result.exit_code == 2 and "column: 'colour'" in result.output and str(source) in result.output
    with pytest.raises(DataError, match="unsupported input extension"):
        ray_batch_module.RayBatchJob(tmp_path / "users.txt", tmp_path / "o.parquet", RecommendConfig())
    source.write_text("user\n1\n", encoding="utf-8")
    (tmp_path / "taken.parquet").write_bytes(b"not ours")
    job = ray_batch_module.RayBatchJob(source, tmp_path / "taken.parquet", RecommendConfig())
    with pytest.raises(DataError, match="the output exists"):
        job.run()
    assert (tmp_path / "taken.parquet").read_bytes() == b"not ours"


def test_a_workers_llmrec_error_is_told_as_one_message():
    from llmrec.errors import LlmrecError
    from llmrec.ray_batch import worker_error

    # Ray passes the error of a worker's constructor as its traceback's text
    died = RuntimeError(
        "The actor died because of an error raised in its creation task\nTraceback (most recent call "
        'last):\n  File "llmrec/data/loaders.py", line 109\nllmrec.errors.DataError: dataset not found\n'
        "  file: /nowhere"
    )
    error = worker_error(died)
    assert isinstance(error, LlmrecError)
    assert str(error) == "a Ray worker failed: DataError: dataset not found\n  file: /nowhere"
    assert worker_error(RuntimeError("a bug")) is None  # anything else keeps its traceback


def test_without_ray_the_command_says_how_to_install_it(ml_small_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    source = tmp_path / "users.csv"
    source.write_text("user\n1\n", encoding="utf-8")
    config = write_config(tmp_path / "c.yaml", dataset=str(ml_small_dir), no_llm=True)
    result = ray_batch(source, "--config", config, "--out", tmp_path / "out.parquet")
    assert result.exit_code == 2 and "pip install 'llmrec[ray]'" in result.output, result.output


@pytest.mark.slow
def test_the_vllm_processor_scores_label_tokens_with_one_lora_per_domain(ray_cluster, smollm_dir, tmp_path):
    """Building Ray's processor needs a running Ray (15 s to start here): slow."""
    from transformers import AutoTokenizer

    from llmrec.llm.backend import label_token_ids
    from llmrec.llm.prompting import PromptTemplate
    from llmrec.ray_batch import (
        ScoringPostprocess,
        ScoringPreprocess,
        build_scoring_processor,
        label_logprobs,
        vllm_processor_config,
    )

    config = RecommendConfig(model=str(smollm_dir), template="listwise_compact", dtype="auto")
    labels = label_token_ids(
        AutoTokenizer.from_pretrained(smollm_dir), PromptTemplate.load(config.template).labels
    )
    adapter = tmp_path / "office"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}), encoding="utf-8")
    (adapter / "adapter_model.safetensors").write_bytes(b"")

    processor_config = vllm_processor_config(
        config, workers=2, batch_size=32, adapters={"office": str(adapter)}
    )
    assert processor_config.model_source == str(smollm_dir) and processor_config.batch_size == 32
    engine = processor_config.engine_kwargs
    assert engine["dtype"] == "bfloat16" and engine["enable_prefix_caching"] and engine["enable_lora"]
    assert engine["max_loras"] == 1

    processor = build_scoring_processor(config, labels, {"office": str(adapter)}, workers=2, batch_size=32)
    # our stages tokenize: only the engine runs in Ray's processor, one GPU per engine actor
    assert processor.list_stage_names() == ["vLLMEngineStage"]
    stage = processor.get_stage_by_name("vLLMEngineStage")
    kwargs = stage.get_dataset_map_batches_kwargs(batch_size=32, data_column="__data")
    assert kwargs["num_gpus"] == 1 and kwargs["compute"].max_size == 2

    pre = ScoringPreprocess(labels, {"office": str(adapter.resolve())})
    row = pre({"row": 7, "prompt_ids": [1, 2, 3], "domain": "office"})
    assert row["row"] == 7 and row["tokenized_prompt"] == [1, 2, 3] and row["model"] == str(adapter.resolve())
    assert row["sampling_params"] == {
        "max_tokens": 1,
        "temperature": 0.0,
        "logprob_token_ids": labels,
        "detokenize": False,
    }
    assert "model" not in pre({"row": 8, "prompt_ids": [1], "domain": "movies"})  # the base model

    # the engine's output: token ids become text once the rows are stored in Arrow
    step = {str(t): {"logprob": -float(i), "rank": i + 1} for i, t in enumerate(reversed(labels))}
    output = {**row, "logprobs": [step], "generated_tokens": [labels[0]], "num_input_tokens": 3}
    scored = ScoringPostprocess(labels)(output)
    assert scored["row"] == 7 and scored["domain"] == "office" and "logprobs" not in scored
    assert scored["label_logprobs"] == [-float(len(labels) - 1 - i) for i in range(len(labels))]
    with pytest.raises(Exception, match="no log-prob for label token"):
        label_logprobs({"row": 1, "logprobs": [{str(labels[0]): {"logprob": -1.0}}]}, labels)


# --- slow: a local Ray cluster against `llmrec batch` -------------------------------------------


def assert_same_as_batch(
    source: Path, config_file: Path, tmp_path: Path, chunk_size: int, workers: int, *options
):
    """`llmrec ray-batch` (with ``options``) and `llmrec batch` write the same rows; the Ray
    job's summary."""
    config = load_config(RecommendConfig, config_file)
    reference = BatchJob(source, tmp_path / "batch.parquet", config, chunk_size).run(progress=False)
    out, summary_file = tmp_path / f"ray-{workers}.parquet", tmp_path / f"ray-{workers}.json"
    result = ray_batch(
        source,
        "--config",
        config_file,
        "--out",
        out,
        "--workers",
        workers,
        "--chunk-size",
        chunk_size,
        "--cpus-per-worker",
        1,
        "--summary",
        summary_file,
        *options,
    )
    assert result.exit_code == 0, result.output
    ours, theirs = pq.read_table(out), pq.read_table(reference.output)
    assert ours.schema == theirs.schema and ours.num_rows == theirs.num_rows
    assert ours.to_pylist() == theirs.to_pylist()
    assert out.read_bytes() == Path(reference.output).read_bytes()  # one row group per chunk, as batch
    summary = json.loads(summary_file.read_text())
    assert (summary["errors"], summary["fallbacks"], summary["reranked"]) == (
        reference.errors,
        reference.fallbacks,
        reference.reranked,
    )
    assert summary["requests"] == reference.requests and summary["users_per_s"] > 0
    assert not out.with_name(out.name + ".ray-parts").exists()
    return summary


@pytest.mark.slow
def test_ray_job_writes_the_rows_of_llmrec_batch_with_error_rows(ray_cluster, ml_small_dir, tmp_path):
    """No LLM (itemknn's order), CSV and JSONL, bad rows, a last chunk shorter than the rest."""
    config = write_config(tmp_path / "c.yaml", dataset=str(ml_small_dir), retriever="itemknn", no_llm=True)
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    summary = assert_same_as_batch(jsonl, config, tmp_path, chunk_size=4, workers=2)
    assert summary["errors"] == 2 and summary["fallbacks"] == {"llm_disabled": 12}
    csv = tmp_path / "requests.csv"
    csv.write_text("user\n" + "".join(f"{u}\n" for u in (5, 6, 999999, 7, 8)), encoding="utf-8")
    summary = assert_same_as_batch(csv, config, tmp_path / "csv", chunk_size=2, workers=1)
    assert summary["errors"] == 1 and summary["chunks"] == 3


@pytest.mark.slow
def test_ray_job_with_the_llm_ranks_as_llmrec_batch(ray_cluster, ml_small_dir, smollm_dir, tmp_path):
    """16 ml-latest-small users (Parquet), the LLM stage on (SmolLM2-135M, transformers, one
    torch thread in both jobs), 2 workers, chunks of 6, 6 and 4: the same rankings and scores."""
    import pyarrow as pa

    config = write_config(
        tmp_path / "llm.yaml",
        dataset=str(ml_small_dir),
        retriever="itemknn",  # fits in a second, in each worker too
        model=str(smollm_dir),
        template="listwise_compact",
        dtype="auto",
        batch_size=8,
        threads=1,
    )
    source = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user": [str(u) for u in range(1, 17)]}), source)
    summary = assert_same_as_batch(source, config, tmp_path, chunk_size=6, workers=2)
    assert summary["reranked"] == 16 and summary["fallbacks"] == {} and summary["workers"] == 2


@pytest.mark.slow
def test_staged_scoring_ranks_as_llmrec_batch(ray_cluster, ml_small_dir, smollm_dir, tmp_path):
    """`--scoring staged`: stage A (prompts), B (SmolLM2-135M through transformers, one torch
    thread as in `llmrec batch`) and C (ordering) as Ray Data stages; 16 users, a bad row, chunks
    of 6: the same rankings, scores and bytes as `llmrec batch`."""
    import pyarrow as pa

    config = write_config(tmp_path / "llm.yaml", **llm_settings(ml_small_dir, smollm_dir), threads=1)
    source = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user": [str(u) for u in range(1, 17)] + ["999999"]}), source)
    summary = assert_same_as_batch(source, config, tmp_path, 6, 1, "--scoring", "staged")
    assert summary["reranked"] == 16 and summary["errors"] == 1 and summary["fallbacks"] == {}


# --- the staged routes up to the device ---------------------------------------------------------


def llm_settings(ml_small_dir: Path, smollm_dir: Path) -> dict:
    """The LLM settings of the tests: itemknn top-10, SmolLM2-135M, the compact listwise prompt."""
    return {
        "dataset": str(ml_small_dir),
        "retriever": "itemknn",
        "model": str(smollm_dir),
        "template": "listwise_compact",
        "dtype": "auto",
        "batch_size": 8,
    }


def test_ray_vllm_without_cuda_is_refused_before_ray_starts(ml_small_dir, smollm_dir, tmp_path, monkeypatch):
    import torch

    import llmrec.ray_batch as ray_batch_module

    def no_cluster(*args, **kwargs):
        raise AssertionError("Ray started before --scoring was checked")

    monkeypatch.setattr(ray_batch_module, "ray_cluster", no_cluster)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CI machine
    config = write_config(tmp_path / "c.yaml", **llm_settings(ml_small_dir, smollm_dir))
    source = tmp_path / "users.csv"
    source.write_text("user\n1\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    result = ray_batch(source, "--config", config, "--out", out, "--scoring", "ray-vllm")
    assert result.exit_code == 2, result.output
    assert "scoring='ray-vllm'" in result.output and "needs CUDA GPUs" in result.output
    result = ray_batch(source, "--config", config, "--out", out, "--scoring", "staged", "--shuffles", 2)
    assert result.exit_code == 2 and "scoring='staged'" in result.output and "shuffles 0" in result.output
    assert not out.exists()


@pytest.fixture(scope="module")
def stage_a(ml_small_dir, smollm_dir, tmp_path_factory):
    """Stage A of the ray-vllm route (token ids on) on 4 known users, a typed history and a bad
    row, run in this process: its config and output rows."""
    import pyarrow as pa

    from llmrec.ray_batch import PromptWorker, encode_rows

    path = write_config(
        tmp_path_factory.mktemp("stage_a") / "c.yaml", **llm_settings(ml_small_dir, smollm_dir)
    )
    config = load_config(RecommendConfig, path)
    rows = pa.table(
        {
            "user": ["1", "2", "3", "4", None, "999999"],
            "history": [None, None, None, None, "Heat;Casino (1995)", None],
        }
    )
    encoded = encode_rows(rows).append_column("id", pa.array(range(rows.num_rows), pa.int64()))
    return config, PromptWorker(config, token_ids=True)(encoded)


def test_ray_vllm_stage_a_rows_become_the_engine_requests(stage_a):
    from llmrec.ray_batch import ScoringPreprocess, prompt_reranker

    config, table = stage_a
    reranker = prompt_reranker(config)
    labels = reranker.label_ids
    rows = table.to_pylist()
    assert [r["error"] is not None for r in rows] == [False] * 5 + [True]
    for row in rows[:5]:
        assert row["reason"] is None and len(row["item_ids"]) == 10 == len(row["retriever_scores"])
        assert row["label_order"] == list(range(10))
        ids = reranker.backend.tokenizer.encode(row["prompt_text"], add_special_tokens=False)
        assert row["prompt_ids"] == ids  # as our backends tokenize: no added BOS
    pre = ScoringPreprocess(labels, {})
    request = pre(rows[0])
    assert request["tokenized_prompt"] == rows[0]["prompt_ids"] and "model" not in request
    assert request["sampling_params"] == {
        "max_tokens": 1,
        "temperature": 0.0,
        "logprob_token_ids": labels,
        "detokenize": False,
    }
    assert pre(rows[5])["tokenized_prompt"] == labels[:1]  # a bad row: a one-token request


def test_stage_c_orders_the_engine_output_as_the_reranker(stage_a):
    """The engine's output dict (the device boundary) -> postprocess -> stage C: the label
    log-probs decide the order; the bad row stays an error row; stage B on our backend emits
    the postprocess's columns."""
    import pyarrow as pa

    from llmrec.ray_batch import (
        ScoringPostprocess,
        ScoringPreprocess,
        ScoringWorker,
        order_stage,
        prompt_reranker,
    )

    config, table = stage_a
    labels = prompt_reranker(config).label_ids
    pre, post = ScoringPreprocess(labels, {}), ScoringPostprocess(labels)
    outputs = []
    for row in table.to_pylist():
        request = pre(row)
        # label i scores i: the retriever's last candidate first
        step = {str(t): {"logprob": float(i) - 30.0, "rank": 1} for i, t in enumerate(labels)}
        outputs.append(post({**request, "logprobs": [step], "generated_tokens": [labels[0]]}))
    scored = pa.Table.from_pylist(outputs)
    assert set(scored.column_names) == set(ScoringWorker(config)(table).column_names)
    ranked = order_stage(scored, task="listwise", retriever_weight=0.0, n=5).to_pylist()
    first = [r for r in ranked if r["row"] == 0]
    assert [r["retriever_rank"] for r in first] == [10, 9, 8, 7, 6]
    assert [r["score"] for r in first] == [-21.0, -22.0, -23.0, -24.0, -25.0]
    assert all(r["reranked"] and r["reason"] is None for r in ranked if r["row"] < 5)
    bad = [r for r in ranked if r["row"] == 5]
    assert len(bad) == 1 and bad[0]["item_id"] is None and "999999" in bad[0]["error"]
    no_scores = scored.set_column(
        scored.schema.get_field_index("label_logprobs"),
        "label_logprobs",
        pa.nulls(scored.num_rows, pa.list_(pa.float64())),
    )
    fallback = order_stage(no_scores, task="listwise", retriever_weight=0.0, n=5).to_pylist()
    assert {r["reason"] for r in fallback if r["row"] < 5} == {"llm_error"}
    assert [r["retriever_rank"] for r in fallback if r["row"] == 0] == [1, 2, 3, 4, 5]
