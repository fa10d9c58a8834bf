"""``llmrec ray-batch``: the job of ``llmrec batch`` on Ray Data, on this machine or a cluster.

The pipeline: ``read_parquet`` / ``read_csv`` / ``read_text`` (JSONL) -> each row numbered in
file order -> blocks of exactly ``chunk_size`` rows -> ``map_batches`` over an actor pool of
:class:`RankingWorker` (each builds data, retriever and reranker once, then ranks each chunk
with :class:`~llmrec.batch.ChunkRanker`, the code path of ``llmrec batch``) -> ``write_parquet``
into ``OUT.ray-parts/`` -> one file ``OUT`` in input order, one row group per chunk, as
``llmrec batch`` writes it: the same input, settings and chunk size give the same rows.

Inputs are checked as ``llmrec batch`` checks them (the columns before Ray starts, each row in
the workers: a bad row becomes an ``error`` row). Unlike ``llmrec batch`` the job does not
resume: Ray retries a failed task, and a killed job starts again.

On GPUs the LLM stage can be Ray's vLLM integration (``ray.data.llm``) instead of an actor
wrapping our backend: :func:`vllm_processor_config` and :func:`build_scoring_processor` build
it, with one request per prompt (``max_tokens=1``, ``logprob_token_ids`` = the template's label
ids, as :class:`~llmrec.llm.vllm_backend.VLLMBackend`) and one LoRA adapter per domain.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llmrec.batch import (
    CSV_OPTIONS,
    INPUT_COLUMNS,
    OUTPUT_SCHEMA,
    ROW_SCHEMA,
    ChunkRanker,
    JobSummary,
    input_columns,
    input_kind,
    request_of,
    write_chunks,
)
from llmrec.errors import ConfigError, DataError, LlmrecError

if TYPE_CHECKING:
    from llmrec.config import RecommendConfig

logger = logging.getLogger("llmrec.ray_batch")

INSTALL_HINT = "Ray Data is not installed: pip install 'llmrec[ray]' (or pip install 'ray[data]')"

TIMING_COLUMNS = ("started", "ended")
"""Wall-clock times (s since the epoch) of the chunk each output row came from."""


def import_ray() -> Any:
    """The ``ray`` module with ``ray.data``, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return ray


@dataclass
class RaySummary(JobSummary):
    """What a Ray job did. ``rank_s`` runs from the first chunk's start to the last chunk's end
    in any worker (Ray start, reading and the workers' setup excluded: ``setup_s``);
    ``users_per_s`` = requests / ``rank_s``."""

    workers: int
    cpus_per_worker: int

    def line(self) -> str:
        """The one-line summary the command prints."""
        return (
            f"{self.requests} requests in {self.chunks} chunks on {self.workers} Ray worker(s) x "
            f"{self.cpus_per_worker} CPU(s): ranked in {self.rank_s:.1f} s ({self.rate()} users/s; "
            f"setup {self.setup_s:.1f} s, total {self.total_s:.1f} s); {self.outcome()}"
        )


# --- the workers -------------------------------------------------------------------------------


class RankingWorker:
    """One actor of the pool: builds the parts of ``config`` once, then ranks a chunk per call
    as ``llmrec batch`` does (:meth:`ChunkRanker.rank`)."""

    def __init__(self, config: RecommendConfig, threads: int | None = None) -> None:
        if threads:  # Ray sets OMP_NUM_THREADS=1 in an actor; a worker may own more cores
            import torch

            torch.set_num_threads(threads)
        self.ranker = ChunkRanker.build(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The output rows (:data:`~llmrec.batch.ROW_SCHEMA` and the chunk's timing) of a chunk
        of encoded input rows (:func:`encode_rows`) numbered in ``id``."""
        values = [batch.column(name).to_pylist() for name in ("id", *INPUT_COLUMNS)]
        requests = [request_of(row, *map(_decode, fields)) for row, *fields in zip(*values)]
        started = time.time()
        table, _ = self.ranker.rank(requests, schema=ROW_SCHEMA)
        ended = time.time()
        for name, value in zip(TIMING_COLUMNS, (started, ended)):
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.float64()))
        return table


def encode_rows(batch: pa.Table) -> pa.Table:
    """Parquet or CSV rows with each input column as JSON text (absent: null), so that values of
    any type cross Ray's Arrow blocks unchanged."""
    n = batch.num_rows
    columns = {
        name: batch.column(name).to_pylist() if name in batch.column_names else [None] * n
        for name in INPUT_COLUMNS
    }
    return _encoded(columns)


def encode_json_lines(batch: pa.Table) -> pa.Table:
    """JSONL lines (``read_text``'s ``text``) as :func:`encode_rows` rows; blank lines dropped.
    Every line was checked before the job started (:func:`~llmrec.batch.input_columns`)."""
    rows = [json.loads(line) for line in batch.column("text").to_pylist() if line.strip()]
    return _encoded({name: [row.get(name) for row in rows] for name in INPUT_COLUMNS})


def _encoded(columns: Mapping[str, list[Any]]) -> pa.Table:
    return pa.table(
        {
            name: pa.array([json.dumps(v, default=str) for v in values], pa.string())
            for name, values in columns.items()
        }
    )


def _decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- the job -----------------------------------------------------------------------------------


@dataclass
class RayBatchJob:
    """Rank every row of ``input_path`` with the settings of ``config`` into ``out`` (Parquet) on
    Ray Data: ``workers`` actors of ``cpus_per_worker`` CPUs each (default: this machine's CPUs
    shared out) and ``gpus_per_worker`` GPUs, ``chunk_size`` rows per LLM scoring call.
    ``address``: an existing cluster (``ray start --head``), else a local one of ``num_cpus``
    logical CPUs is started and stopped."""

    input_path: Path
    out: Path
    config: RecommendConfig
    workers: int = 1
    chunk_size: int = 64
    cpus_per_worker: int | None = None
    address: str | None = None
    num_cpus: int | None = None
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        self.input_path, self.out = Path(self.input_path), Path(self.out)
        for name in ("workers", "chunk_size", "cpus_per_worker", "num_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError("must be >= 1", parameter=name, value=value)
        if self.gpus_per_worker < 0:
            raise ConfigError("must be >= 0", parameter="gpus_per_worker", value=self.gpus_per_worker)
        input_columns(self.input_path)  # fails fast: before Ray, data or a model starts
        if self.cpus_per_worker is None:
            self.cpus_per_worker = max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def parts_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".ray-parts")

    def run(self, overwrite: bool = False, progress: bool = False) -> RaySummary:
        """Rank every row, write ``out`` (atomic) and say what was done; an existing ``out`` is
        replaced only with ``overwrite``."""
        if self.out.exists() and not overwrite:
            raise DataError(
                "the output exists", file=str(self.out), hint="choose another --out, or --overwrite"
            )
        started = time.time()
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        try:
            with ray_cluster(self.address, self._local_cpus()) as ray:
                try:
                    requests = self._pipeline(ray, progress)
                except Exception as err:
                    known = worker_error(err)
                    if known is None:
                        raise
                    raise known from None
            table = _in_input_order(pq.read_table(self.parts_dir))
        finally:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        rows = table.column("row").to_numpy()
        write_chunks(self.out, _chunks(table, rows, self.chunk_size))
        first = pc.min(table.column("started")).as_py()
        rank_s = pc.max(table.column("ended")).as_py() - first
        return RaySummary(
            requests=requests,
            chunks=-(-requests // self.chunk_size),
            workers=self.workers,
            cpus_per_worker=int(self.cpus_per_worker or 1),
            setup_s=round(first - started, 3),
            rank_s=round(rank_s, 3),
            total_s=round(time.time() - started, 3),
            users_per_s=round(requests / rank_s, 4) if rank_s > 0 else None,
            output=str(self.out),
            **request_counts(table, rows),
        )

    def _local_cpus(self) -> int:
        """Logical CPUs of a local cluster: the workers' and one more for reading and writing
        (without it the actors hold every CPU and the read tasks wait forever)."""
        if self.num_cpus is not None:
            return self.num_cpus
        return max(os.cpu_count() or 1, self.workers * int(self.cpus_per_worker or 1)) + 1

    def _pipeline(self, ray: Any, progress: bool) -> int:
        """Run the Ray Data pipeline into :attr:`parts_dir`; the number of input rows."""
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # numbering the rows needs file order
        context.enable_progress_bars = progress
        ds = read_input(ray, self.input_path)
        requests = ds.count()
        if requests == 0:
            raise DataError("the input has no rows", file=str(self.input_path))
        with _quiet_deprecation():  # zip: deterministic here, since preserve_order is set
            ds = ds.zip(ray.data.range(requests))
        ds = ds.repartition(target_num_rows_per_block=self.chunk_size, strict=True)
        ds = ds.map_batches(
            RankingWorker,
            fn_constructor_args=(self.config, self.cpus_per_worker),
            batch_size=self.chunk_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,  # GPUs: backend vllm or transformers in each actor
        )
        ds.write_parquet(str(self.parts_dir))
        return requests


def worker_error(err: Exception) -> LlmrecError | None:
    """The llmrec error (a bad dataset, model or adapter) behind a Ray worker's failure, from
    the worker's traceback that Ray passes as text; None for any other error."""
    text = str(err)
    found = list(re.finditer(r"llmrec\.errors\.(\w+): ", text))
    if isinstance(err, LlmrecError) or not found:
        return None
    return LlmrecError(f"a Ray worker failed: {found[-1].group(1)}: {text[found[-1].end() :].strip()}")


def read_input(ray: Any, path: Path) -> Any:
    """The input file as a Ray Dataset of :func:`encode_rows` rows, in file order."""
    kind = input_kind(path)
    if kind == "jsonl":
        return ray.data.read_text(str(path)).map_batches(encode_json_lines, batch_format="pyarrow")
    if kind == "csv":
        ds = ray.data.read_csv(str(path), convert_options=CSV_OPTIONS)
    else:
        ds = ray.data.read_parquet(str(path))
    return ds.map_batches(encode_rows, batch_format="pyarrow")


@contextlib.contextmanager
def ray_cluster(address: str | None, num_cpus: int) -> Iterator[Any]:
    """Ray connected to ``address``, or a local cluster of ``num_cpus`` logical CPUs (no
    dashboard); one started here is shut down on exit, one already running is left as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _in_input_order(table: pa.Table) -> pa.Table:
    """The workers' output rows by input row, each request's items by rank."""
    order = pc.sort_indices(table, sort_keys=[("row", "ascending"), ("rank", "ascending")])
    return table.take(order)


def _chunks(table: pa.Table, rows: np.ndarray, chunk_size: int) -> Iterator[pa.Table]:
    """The output rows of each chunk of ``chunk_size`` input rows, as ``llmrec batch``'s chunks."""
    output = table.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
    bounds = np.searchsorted(rows, np.arange(0, int(rows[-1]) + 1 + chunk_size, chunk_size))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            yield output.slice(int(lo), int(hi - lo))


def request_counts(table: pa.Table, rows: np.ndarray) -> dict[str, Any]:
    """Per request (its first output row): reranked, LLM fallbacks by reason, errors."""
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    heads = table.filter(pa.array(first))
    reasons = Counter(r for r in heads.column("reason").to_pylist() if r is not None)
    return {
        "reranked": sum(bool(v) for v in heads.column("reranked").to_pylist()),
        "fallbacks": dict(sorted(reasons.items())),
        "errors": sum(e is not None for e in heads.column("error").to_pylist()),
    }


# --- the GPU configuration: Ray's vLLM integration ---------------------------------------------


def vllm_processor_config(
    config: RecommendConfig,
    *,
    workers: int = 1,
    batch_size: int = 64,
    adapters: Mapping[str, str] | None = None,
    accelerator_type: str | None = None,
    max_model_len: int = 2048,
    engine_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """The ``ray.data.llm.vLLMEngineProcessorConfig`` that scores prompts on GPUs: ``workers``
    vLLM engines (one GPU each) of ``config.model``, ``batch_size`` prompts per engine call.

    Our stages hand it token ids (tokenized as our backends do, no added BOS), so Ray's chat
    template, tokenizer and detokenizer stages are off. ``adapters`` (domain -> PEFT LoRA
    folder) switch LoRA on; each request names its domain's adapter (:func:`scoring_request`).
    """
    from llmrec.llm.models import resolve_dtype, resolve_model

    import_ray()
    from ray.data.llm import vLLMEngineProcessorConfig

    if workers < 1:
        raise ConfigError("must be >= 1", parameter="workers", value=workers)
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(config.dtype, "cuda"),
        "max_model_len": max_model_len,
        "enable_prefix_caching": True,  # every prompt shares the template's instruction prefix
        "seed": config.seed,
    }
    if adapters:
        kwargs.update(enable_lora=True, max_lora_rank=16, max_loras=len(adapters))
    kwargs.update(engine_kwargs or {})
    return vLLMEngineProcessorConfig(
        model_source=resolve_model(config.model),
        engine_kwargs=kwargs,
        batch_size=batch_size,
        concurrency=workers,
        accelerator_type=accelerator_type,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )


def lora_paths(adapters: Mapping[str, str]) -> dict[str, str]:
    """Domain -> absolute LoRA folder, each checked (a PEFT adapter folder), for per-row requests:
    ``ray.data.llm`` loads a request's ``model`` as a LoRA path when it is not the base model."""
    from llmrec.llm.models import check_adapter_folder

    for domain, path in adapters.items():
        check_adapter_folder(path, f"adapters[{domain}]")
    return {domain: os.path.abspath(path) for domain, path in adapters.items()}


def scoring_request(
    prompt_ids: Sequence[int], label_ids: Sequence[int], adapter: str | None = None
) -> dict[str, Any]:
    """The vLLM request of one prompt: the next token's full-vocabulary log-probs of the label
    tokens (``max_tokens=1``, greedy, ``logprob_token_ids``), with LoRA folder ``adapter``."""
    row: dict[str, Any] = {
        "tokenized_prompt": [int(t) for t in prompt_ids],
        "sampling_params": {
            "max_tokens": 1,
            "temperature": 0.0,
            "logprob_token_ids": [int(t) for t in label_ids],
            "detokenize": False,
        },
    }
    if adapter is not None:
        row["model"] = adapter
    return row


def label_logprobs(output: Mapping[str, Any], label_ids: Sequence[int]) -> list[float]:
    """The label log-probs in a ``ray.data.llm`` output row (``logprobs``: per generated token,
    ``{token_id: {"logprob": ...}}``, the ids as ints or as text once stored in Arrow)."""
    from llmrec.llm.vllm_backend import read_label_logprobs

    steps = output.get("logprobs")
    if not steps:
        raise LlmrecError(
            f"the vLLM stage returned no log-probs (row {output.get('row')}); it must score with "
            "scoring_request()'s sampling_params"
        )
    step = {
        int(k): v["logprob"] if isinstance(v, Mapping) else v for k, v in steps[0].items() if v is not None
    }
    return read_label_logprobs(step, [int(t) for t in label_ids], f"row {output.get('row')}")


@dataclass
class ScoringPreprocess:
    """``ray.data.llm`` preprocess: a row ``{"prompt_ids": [...], "domain": str | None, ...}``
    with its vLLM request (:func:`scoring_request`) added; ``adapters``: domain -> LoRA folder
    (a domain without one: the base model)."""

    label_ids: list[int]
    adapters: dict[str, str]

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        adapter = self.adapters.get(row.get("domain") or "")
        return {**row, **scoring_request(row["prompt_ids"], self.label_ids, adapter)}


@dataclass
class ScoringPostprocess:
    """``ray.data.llm`` postprocess: the row's own columns and ``label_logprobs``."""

    label_ids: list[int]

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in row.items() if k not in ENGINE_COLUMNS}
        return {**kept, "label_logprobs": label_logprobs(row, self.label_ids)}


def build_scoring_processor(
    config: RecommendConfig,
    label_ids: Sequence[int],
    adapters: Mapping[str, str] | None = None,
    **options: Any,
) -> Any:
    """A ``ray.data.llm`` processor over rows ``{"prompt_ids": [...], "domain": str | None, ...}``
    that adds ``label_logprobs`` (one per label id) and keeps the other columns
    (:class:`ScoringPreprocess`, :class:`ScoringPostprocess`). ``options``: of
    :func:`vllm_processor_config`. Runs where vLLM has its GPUs; building it needs none."""
    import_ray()
    from ray.data.llm import build_processor

    paths = lora_paths(adapters or {})
    labels = [int(t) for t in label_ids]
    return build_processor(
        vllm_processor_config(config, adapters=paths, **options),
        preprocess=ScoringPreprocess(labels, paths),
        postprocess=ScoringPostprocess(labels),
    )


ENGINE_COLUMNS = frozenset(
    {
        "tokenized_prompt",
        "sampling_params",
        "model",
        "logprobs",
        "prompt_logprobs",
        "generated_tokens",
        "generated_text",
        "num_generated_tokens",
        "num_input_tokens",
        "prompt",
        "prompt_token_ids",
        "params",
        "metrics",
        "time_taken_llm",
        "batch_uuid",
        "embeddings",
    }
)
"""Columns of ``ray.data.llm``'s engine stage that the postprocess drops."""
