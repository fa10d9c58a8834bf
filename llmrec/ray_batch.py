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

``scoring`` chooses how a chunk is ranked (:data:`SCORING`): ``engine`` runs the whole
:class:`~llmrec.batch.ChunkRanker` in each actor (above); ``staged`` and ``ray-vllm`` split it
into Ray Data stages, one row per request between them:

A. :class:`PromptWorker` (CPU actors): rows -> checked requests -> retrieval -> the prompt
   (text and token ids), candidate ids, titles and retriever scores, or the row's ``error`` or
   fallback ``reason``;
B. the label log-probs of each prompt (``label_logprobs``): ``staged``: :class:`ScoringWorker`
   actors running the config's backend (transformers, vllm); ``ray-vllm``: Ray's vLLM
   integration (``ray.data.llm``, :func:`build_scoring_processor`) on GPUs, one request per
   prompt (``max_tokens=1``, ``logprob_token_ids`` = the template's label ids, as
   :class:`~llmrec.llm.vllm_backend.VLLMBackend`) and one LoRA adapter per domain;
C. :func:`order_stage` (CPU tasks): label log-probs -> the ranked list, with the reranker's and
   ``llmrec batch``'s ordering functions, into the output rows.

The staged routes score one prompt per user: a listwise template, no shuffles, the verbalizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    BatchRequest,
    ChunkRanker,
    JobSummary,
    input_columns,
    input_kind,
    ordered_lists,
    request_of,
    request_rows,
    write_chunks,
)
from llmrec.candidates.base import Candidates
from llmrec.errors import ConfigError, DataError, LlmrecError

if TYPE_CHECKING:
    from llmrec.config import RecommendConfig
    from llmrec.data.catalog import History
    from llmrec.llm.reranker import LLMReranker
    from llmrec.service.loading import ServiceParts

logger = logging.getLogger("llmrec.ray_batch")

INSTALL_HINT = "Ray Data is not installed: pip install 'llmrec[ray]' (or pip install 'ray[data]')"

TIMING_COLUMNS = ("started", "ended")
"""Wall-clock times (s since the epoch) of the chunk each output row came from."""

SCORING = ("engine", "staged", "ray-vllm")
"""How ``llmrec ray-batch`` ranks a chunk: the whole ChunkRanker per actor, or stages A -> B ->
C with B on our backend (``staged``) or on Ray's vLLM integration (``ray-vllm``, GPUs)."""

ADAPTER_DOMAIN = "default"
"""The ``domain`` of every request when the config names an adapter (``ray-vllm``: its LoRA)."""

PROMPT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("request_id", pa.string()),
        ("user", pa.string()),
        ("error", pa.string()),
        ("reason", pa.string()),
        ("item_ids", pa.list_(pa.string())),
        ("titles", pa.list_(pa.string())),
        ("retriever_scores", pa.list_(pa.float64())),
        ("fallback", pa.bool_()),
        ("prompt_text", pa.string()),
        ("prompt_ids", pa.list_(pa.int64())),
        ("label_order", pa.list_(pa.int64())),
        ("domain", pa.string()),
        ("started", pa.float64()),
    ]
)
"""Stage A's row per request: its candidates (retriever order, padding dropped) with ids,
titles and retriever scores; the prompt (null, and no ids, when the row is not scored) with
the candidate positions in label order; ``error`` (a bad row) or a fallback ``reason``
(``llm_disabled``, ``llm_error``) as ``llmrec batch`` writes them; when the chunk started."""

SCORES_COLUMN = "label_logprobs"
"""Stage B's column: the label log-probs of the row's prompt (null: not scored, or failed)."""


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
        requests = decode_requests(batch)
        started = time.time()
        table, _ = self.ranker.rank(requests, schema=ROW_SCHEMA)
        ended = time.time()
        for name, value in zip(TIMING_COLUMNS, (started, ended)):
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.float64()))
        return table


def decode_requests(batch: pa.Table) -> list[BatchRequest]:
    """The requests of a chunk of encoded input rows (:func:`encode_rows`) numbered in ``id``."""
    values = [batch.column(name).to_pylist() for name in ("id", *INPUT_COLUMNS)]
    return [request_of(row, *map(_decode, fields)) for row, *fields in zip(*values)]


# --- the stages of the staged routes -----------------------------------------------------------


class PromptOnlyBackend:
    """A backend with the model's tokenizer only: what an :class:`~llmrec.llm.reranker.LLMReranker`
    needs to render prompts (stage A) without loading the model; it scores nothing."""

    def __init__(self, model: str) -> None:
        from transformers import AutoTokenizer

        from llmrec.llm.models import resolve_model

        self.model_name = model
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))

    def label_logprobs(self, prompts: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
        """Not here: stage B scores the prompts."""
        raise RuntimeError("stage A renders prompts; stage B scores them")

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Not here: stage B scores the prompts."""
        raise RuntimeError("stage A renders prompts; stage B scores them")


def prompt_reranker(config: RecommendConfig) -> LLMReranker:
    """The reranker of ``config`` (template, prompt budget, label ids) over the model's
    tokenizer only (:class:`PromptOnlyBackend`)."""
    from llmrec.llm.reranker import LLMReranker

    return LLMReranker(PromptOnlyBackend(config.model), config.template, config.max_prompt_tokens)


def prompt_parts(config: RecommendConfig) -> ServiceParts:
    """Data, retriever and ranking options of ``config`` as ``llmrec batch`` builds them, with
    :func:`prompt_reranker` in place of the LLM (none with ``no_llm``)."""
    from llmrec.service.loading import build_parts

    parts = build_parts(dataclasses.replace(config, no_llm=True))
    if not config.no_llm:
        parts.recommender.reranker = prompt_reranker(config)
    return parts


class PromptWorker:
    """Stage A, one actor of a CPU pool: a chunk of encoded input rows -> one
    :data:`PROMPT_SCHEMA` row per request (checked, retrieved, its prompt rendered and, with
    ``token_ids``, tokenized as our backends do: no added BOS)."""

    def __init__(self, config: RecommendConfig, token_ids: bool = False) -> None:
        self.ranker = ChunkRanker(prompt_parts(config))
        self.token_ids = token_ids
        self.domain = ADAPTER_DOMAIN if config.adapter else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The :data:`PROMPT_SCHEMA` rows of a chunk of :func:`encode_rows` rows."""
        requests = decode_requests(batch)
        started = time.time()
        checked, errors = self.ranker.checked(requests)
        rows = {r.row: self._row(r, started, error=errors[r.row]) for r in requests if r.row in errors}
        rows.update(self._retrieved(checked, started))
        return pa.Table.from_pylist([rows[r.row] for r in requests], schema=PROMPT_SCHEMA)

    def _retrieved(self, checked: list[tuple[BatchRequest, History]], started: float) -> dict[int, dict]:
        """The rows of the valid requests: candidates, prompt, fallback reason."""
        if not checked:
            return {}
        rec = self.ranker.recommender
        histories = [h for _, h in checked]
        candidates = rec.retrieve(histories, self.ranker.parts.allowed)
        prompts, reason = self._prompts(histories, candidates.items)
        rows = {}
        for i, (request, _) in enumerate(checked):
            valid = np.flatnonzero(candidates.items[i] >= 0)
            items = candidates.items[i, valid]
            prompt, order = prompts.get(i, (None, None))
            rows[request.row] = self._row(
                request,
                started,
                reason=reason if i in prompts or reason == "llm_disabled" else None,
                item_ids=[str(rec.catalog.item_ids[j]) for j in items],
                titles=[rec.catalog.titles[j] for j in items],
                retriever_scores=candidates.scores[i, valid].astype(np.float64).tolist(),
                fallback=bool(candidates.fallback[i]),
                prompt_text=None if reason else prompt,
                prompt_ids=self._ids(prompt) if prompt and not reason else [],
                label_order=[] if order is None else order.tolist(),
            )
        return rows

    def _prompts(
        self, histories: list[History], items: np.ndarray
    ) -> tuple[dict[int, tuple[str, np.ndarray]], str | None]:
        """Per history with candidates (by position): its prompt and the candidate positions in
        label order; the fallback reason of them all (no LLM; or a prompt that cannot be built,
        which ``llmrec batch`` meets as a failed scoring call)."""
        rec = self.ranker.recommender
        if rec.reranker is None:
            return {}, "llm_disabled"
        scored = [i for i in range(len(histories)) if (items[i] >= 0).any()]
        if not scored:
            return {}, None
        users, rows = [histories[i] for i in scored], items[scored]
        try:
            texts, layout = rec.reranker.build_prompts(
                *rec.texts(users, rows), self.ranker.parts.params, rec.evidence(users, rows)
            )
        except Exception as err:  # noqa: BLE001 - as a failed scoring call in llmrec batch
            logger.warning("prompts of a chunk of %d failed, retriever order kept: %r", len(scored), err)
            return dict.fromkeys(scored, ("", np.arange(0))), "llm_error"
        return {scored[u]: (text, order) for text, (u, order) in zip(texts, layout)}, None

    def _ids(self, prompt: str) -> list[int]:
        if not self.token_ids:
            return []
        tokenizer = self.ranker.recommender.reranker.backend.tokenizer
        return tokenizer.encode(prompt, add_special_tokens=False)

    def _row(self, request: BatchRequest, started: float, **values: Any) -> dict[str, Any]:
        return {
            "row": request.row,
            "request_id": request.request_id,
            "user": None if request.user is None else str(request.user),
            "domain": self.domain,
            "started": started,
            **values,
        }


class ScoringWorker:
    """Stage B on our backend, one actor of a pool: ``label_logprobs`` of each row's prompt,
    scored as ``llmrec batch`` scores a chunk (the config's backend, the reranker's chunks of
    prompts); the columns the ``ray.data.llm`` processor's postprocess emits. A failed call
    leaves the batch's rows unscored (stage C: ``llm_error``)."""

    def __init__(self, config: RecommendConfig, threads: int | None = None) -> None:
        from llmrec.llm.reranker import RerankParams
        from llmrec.pipeline import build_reranker

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.reranker = build_reranker(config)
        self.chunk_size = RerankParams().chunk_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``batch`` (:data:`PROMPT_SCHEMA`) with :data:`SCORES_COLUMN`."""
        prompts = batch.column("prompt_text").to_pylist()
        scored = [i for i, p in enumerate(prompts) if p is not None]
        values: list[list[float] | None] = [None] * len(prompts)
        try:
            for lo in range(0, len(scored), self.chunk_size):
                part = scored[lo : lo + self.chunk_size]
                logp = self.reranker.backend.label_logprobs(
                    [prompts[i] for i in part], self.reranker.label_ids
                )
                for i, row in zip(part, logp):
                    values[i] = row.astype(np.float64).tolist()
        except Exception as err:  # noqa: BLE001 - any LLM failure: the retriever's order, with the reason
            logger.warning("LLM scoring of a chunk of %d failed, retriever order kept: %r", len(scored), err)
            values = [None] * len(prompts)
        return batch.append_column(SCORES_COLUMN, pa.array(values, pa.list_(pa.float64())))


@dataclass
class ChunkCatalog:
    """The candidates of a chunk as a catalog (ids and titles by index) for
    :meth:`~llmrec.pipeline.Ranking.lists`."""

    item_ids: np.ndarray
    titles: list[str]


def chunk_candidates(rows: Sequence[Mapping[str, Any]]) -> tuple[ChunkCatalog, Candidates]:
    """Stage A's rows as :class:`~llmrec.candidates.base.Candidates` over a :class:`ChunkCatalog`
    of their candidates (each row's in retriever order, padded with -1)."""
    width = max([len(r["item_ids"] or []) for r in rows] + [1])
    items = np.full((len(rows), width), -1, dtype=np.int64)
    scores = np.full((len(rows), width), -np.inf)
    ids: list[str] = []
    titles: list[str] = []
    for u, r in enumerate(rows):
        n = len(r["item_ids"] or [])
        items[u, :n] = np.arange(len(ids), len(ids) + n)
        scores[u, :n] = r["retriever_scores"] or []
        ids += r["item_ids"] or []
        titles += r["titles"] or []
    fallback = np.array([bool(r["fallback"]) for r in rows], dtype=bool)
    return ChunkCatalog(np.array(ids, dtype=object), titles), Candidates(items, scores, fallback)


def row_llm_scores(row: Mapping[str, Any], task: str) -> np.ndarray | None:
    """A row's LLM score per candidate (retriever order) from its label log-probs, as
    :meth:`~llmrec.llm.reranker.LLMReranker.score` computes them; None when not scored."""
    from llmrec.llm.reranker import candidate_scores, prompt_scores

    logp = row.get(SCORES_COLUMN)
    if logp is None or row.get("prompt_text") is None:
        return None
    layout = [(0, np.asarray(row["label_order"], dtype=np.int64))]
    return candidate_scores(layout, prompt_scores(np.asarray([logp]), task), [len(row["item_ids"])])[0]


def row_reason(row: Mapping[str, Any], scores: np.ndarray | None) -> str | None:
    """A row's fallback reason: stage A's, else ``llm_error`` for a prompt left unscored."""
    if row.get("reason") is not None:
        return row["reason"]
    return "llm_error" if row.get("prompt_text") is not None and scores is None else None


def order_stage(batch: pa.Table, *, task: str, retriever_weight: float, n: int | None) -> pa.Table:
    """Stage C: scored rows (:data:`PROMPT_SCHEMA` with :data:`SCORES_COLUMN`) -> the output rows
    of ``llmrec batch`` (:data:`~llmrec.batch.ROW_SCHEMA`) and the chunk's timing: each list
    ordered by its LLM scores fused at ``retriever_weight`` (else the retriever's order), top
    ``n``; ``task``: the template's."""
    rows = batch.to_pylist()
    catalog, candidates = chunk_candidates(rows)
    scores = [row_llm_scores(r, task) for r in rows]
    lists = ordered_lists(candidates, scores, retriever_weight, catalog, n)  # type: ignore[arg-type]
    out: list[dict[str, Any]] = []
    for r, ranked, llm in zip(rows, lists, scores):
        request = BatchRequest(r["row"], r["request_id"], r["user"])
        out.extend(request_rows(request, ranked, row_reason(r, llm), r["error"]))
    table = pa.Table.from_pylist(out, schema=ROW_SCHEMA)
    started = min(r["started"] for r in rows) if rows else time.time()
    for name, value in zip(TIMING_COLUMNS, (started, time.time())):
        table = table.append_column(name, pa.array([value] * table.num_rows, pa.float64()))
    return table


def check_scoring(scoring: str, config: RecommendConfig) -> None:
    """A :class:`ConfigError` naming ``--scoring`` for a route this config or machine cannot run:
    an unknown one; a staged route with more than one prompt per user; ``ray-vllm`` without
    CUDA. Cheap: runs before Ray starts."""
    if scoring not in SCORING:
        raise ConfigError(f"one of {', '.join(SCORING)}", parameter="scoring", value=scoring)
    if scoring == "engine" or config.no_llm:
        return
    from llmrec.llm.prompting import PromptTemplate

    if config.scorer == "likelihood":
        raise ConfigError(
            "scores one listwise prompt per user; the likelihood scorer (a history-LM adapter) "
            "runs with --scoring engine",
            parameter="scoring",
            value=scoring,
        )
    template = PromptTemplate.load(config.template)
    if template.task != "listwise" or config.shuffles or config.mode != "verbalizer":
        raise ConfigError(
            f"scores one prompt per user: a listwise template (not {template.task!r} "
            f"{template.name!r}), shuffles 0 (not {config.shuffles}) and mode verbalizer "
            f"(not {config.mode!r}); or --scoring engine",
            parameter="scoring",
            value=scoring,
        )
    if scoring == "ray-vllm" and not cuda_available():
        raise ConfigError(
            "needs CUDA GPUs (Ray's vLLM integration) and this machine has none: use "
            "--scoring staged (the config's backend) or engine",
            parameter="scoring",
            value=scoring,
        )


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU on this machine."""
    import torch

    return torch.cuda.is_available()


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
    logical CPUs is started and stopped. ``scoring``: one of :data:`SCORING`; the staged routes
    add a pool of ``workers`` one-CPU actors for stage A."""

    input_path: Path
    out: Path
    config: RecommendConfig
    workers: int = 1
    chunk_size: int = 64
    cpus_per_worker: int | None = None
    address: str | None = None
    num_cpus: int | None = None
    gpus_per_worker: float = 0.0
    scoring: str = "engine"

    def __post_init__(self) -> None:
        self.input_path, self.out = Path(self.input_path), Path(self.out)
        for name in ("workers", "chunk_size", "cpus_per_worker", "num_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError("must be >= 1", parameter=name, value=value)
        if self.gpus_per_worker < 0:
            raise ConfigError("must be >= 0", parameter="gpus_per_worker", value=self.gpus_per_worker)
        input_columns(self.input_path)  # fails fast: before Ray, data or a model starts
        check_scoring(self.scoring, self.config)
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
        stage_a = self.workers if self.scoring != "engine" else 0
        return max(os.cpu_count() or 1, self.workers * int(self.cpus_per_worker or 1) + stage_a) + 1

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
        ds = self._ranked(ray, ds) if self.scoring == "engine" else self._staged(ray, ds)
        ds.write_parquet(str(self.parts_dir))
        return requests

    def _ranked(self, ray: Any, ds: Any) -> Any:
        """``engine``: each chunk ranked by a :class:`RankingWorker` of the pool."""
        # GPUs: backend vllm or transformers in each actor
        return self._pool(ray, ds, RankingWorker, (self.config, self.cpus_per_worker), self.cpus_per_worker)

    def _pool(self, ray: Any, ds: Any, worker: type, args: tuple, cpus: int | None) -> Any:
        """``ds`` through a pool of ``workers`` actors of class ``worker`` (built with ``args``),
        one chunk per call: ``cpus`` CPUs each, and ``gpus_per_worker`` GPUs but for stage A."""
        return ds.map_batches(
            worker,
            fn_constructor_args=args,
            batch_size=self.chunk_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=cpus,
            num_gpus=0.0 if worker is PromptWorker else self.gpus_per_worker,
        )

    def _staged(self, ray: Any, ds: Any) -> Any:
        """``staged`` / ``ray-vllm``: stage A (prompts), B (label log-probs), C (order)."""
        from llmrec.llm.prompting import PromptTemplate

        ds = self._pool(ray, ds, PromptWorker, (self.config, self.scoring == "ray-vllm"), 1)
        if not self.config.no_llm:
            ds = self._scored(ray, ds)
        return ds.map_batches(
            order_stage,
            fn_kwargs={
                "task": PromptTemplate.load(self.config.template).task,
                "retriever_weight": self.config.retriever_weight,
                "n": self.config.n,
            },
            batch_size=self.chunk_size,
            batch_format="pyarrow",
        )

    def _scored(self, ray: Any, ds: Any) -> Any:
        """Stage B: :class:`ScoringWorker` actors, or Ray's vLLM processor (``ray-vllm``)."""
        if self.scoring == "ray-vllm":
            processor = build_scoring_processor(
                self.config,
                prompt_reranker(self.config).label_ids,
                {ADAPTER_DOMAIN: self.config.adapter} if self.config.adapter else None,
                workers=self.workers,
                batch_size=self.chunk_size,
                max_model_len=max(2048, self.config.max_prompt_tokens + 1),
            )
            return processor(ds)
        return self._pool(ray, ds, ScoringWorker, (self.config, self.cpus_per_worker), self.cpus_per_worker)


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
    (a domain without one: the base model). A row without prompt ids (a bad row, no candidates)
    is sent as a one-token request, its log-probs left out by :class:`ScoringPostprocess`."""

    label_ids: list[int]
    adapters: dict[str, str]

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        adapter = self.adapters.get(row.get("domain") or "")
        prompt = row["prompt_ids"] if has_prompt(row) else self.label_ids[:1]
        return {**row, **scoring_request(prompt, self.label_ids, adapter)}


@dataclass
class ScoringPostprocess:
    """``ray.data.llm`` postprocess: the row's own columns and ``label_logprobs`` (null for a
    row without prompt ids)."""

    label_ids: list[int]

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in row.items() if k not in ENGINE_COLUMNS}
        scores = label_logprobs(row, self.label_ids) if has_prompt(row) else None
        return {**kept, SCORES_COLUMN: scores}


def has_prompt(row: Mapping[str, Any]) -> bool:
    """Whether a row has prompt ids to score (a list or, once in Arrow, an array)."""
    ids = row.get("prompt_ids")
    return ids is not None and len(ids) > 0


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
