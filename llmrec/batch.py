"""``llmrec batch``: rank a table of users or histories on one machine, in resumable chunks.

The input (Parquet, CSV or JSONL) holds a known ``user`` and/or a typed ``history`` per row,
and optionally a ``request_id``. Each row is checked as the HTTP service checks a request
(:class:`~llmrec.service.history.HistoryResolver`): a bad row becomes an output row with an
``error`` naming the row, the column and the value, and the job goes on. The rows are ranked
chunk by chunk through :class:`~llmrec.pipeline.Recommender` (retrieve the chunk, one LLM
scoring call for it, order), as the service's micro-batcher scores a batch; when that call
fails the chunk keeps the retriever's order with ``reason`` ``llm_error``.

Each chunk is written atomically to ``OUT.parts/part-NNNNN.parquet`` and recorded in
``OUT.parts/manifest.json`` (also atomic) together with the job's fingerprint: the input's
bytes, the settings and the chunk size. A rerun skips the finished chunks when the
fingerprint matches, and refuses to mix outputs when it does not (``overwrite`` discards
them). At the end the chunks are combined into ``OUT`` atomically; the same input and
settings give the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pydantic import ValidationError
from tqdm import tqdm

from llmrec.candidates.base import Candidates
from llmrec.errors import ConfigError, DataError
from llmrec.io import atomic_file, atomic_write_json
from llmrec.service.errors import InputError, validation_message
from llmrec.service.history import HistoryResolver
from llmrec.service.loading import ServiceParts, build_parts
from llmrec.service.schemas import RecommendRequest

if TYPE_CHECKING:
    from llmrec.config import RecommendConfig
    from llmrec.data.catalog import History, ItemCatalog

logger = logging.getLogger("llmrec.batch")

FORMAT_VERSION = 1
"""Of the manifest and the chunk layout: a change makes old chunks unusable."""

INPUT_COLUMNS = ("request_id", "user", "history")
INPUT_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string()),
        pa.field("user", pa.string()),
        pa.field("rank", pa.int32()),
        pa.field("item_id", pa.string()),
        pa.field("title", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("retriever_rank", pa.int32()),
        pa.field("reranked", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("error", pa.string()),
    ]
)
"""One row per recommended item (``rank`` 1..n); a request without items (a bad row, or no
candidate left) is one row whose item columns are null."""

ROW_SCHEMA = OUTPUT_SCHEMA.append(pa.field("row", pa.int64()))
""":data:`OUTPUT_SCHEMA` with each output row's input row (from 0): what a job ranking the
chunks out of order needs to put them back in order."""

CSV_OPTIONS = pa_csv.ConvertOptions(
    column_types={name: pa.string() for name in INPUT_COLUMNS}, strings_can_be_null=True
)
"""How a CSV input is read: ids and titles as text, as typed ("007" stays "007"); an empty
cell is null."""

MANIFEST = "manifest.json"
LOCK = ".lock"


@dataclass
class BatchRequest:
    """One input row: its position (from 0, in file order), id and raw ``user``/``history``."""

    row: int
    request_id: str
    user: Any = None
    history: Any = None


@dataclass
class JobSummary:
    """What the summaries of ``llmrec batch`` and ``llmrec ray-batch`` share: the requests and
    chunks, the seconds spent (``setup_s`` before ranking, ``rank_s`` ranking), users/s over
    ``rank_s``, reranked lists, LLM fallbacks by reason, error rows, the output file."""

    requests: int
    chunks: int
    setup_s: float
    rank_s: float
    total_s: float
    users_per_s: float | None
    reranked: int
    fallbacks: dict[str, int]
    errors: int
    output: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rate(self) -> str:
        """Users per second, as printed."""
        return "-" if self.users_per_s is None else f"{self.users_per_s:.3f}"

    def outcome(self) -> str:
        """The end of the printed line: reranked lists, LLM fallbacks, error rows, the output."""
        fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(self.fallbacks.items())) or "none"
        return (
            f"reranked {self.reranked}, LLM fallbacks: {fallbacks}; errors {self.errors}; "
            f"written {self.output}"
        )


@dataclass
class BatchSummary(JobSummary):
    """What a run did; ``users_per_s`` counts the users ranked in this run over the time spent
    ranking them (data, retriever and model loading excluded: ``setup_s``)."""

    chunks_computed: int
    chunks_skipped: int
    users_computed: int
    manifest: str
    fingerprint: str

    def line(self) -> str:
        """The one-line summary the command prints."""
        return (
            f"{self.requests} requests in {self.chunks} chunks ({self.chunks_computed} computed, "
            f"{self.chunks_skipped} skipped): {self.users_computed} users ranked in {self.rank_s:.1f} s "
            f"({self.rate()} users/s; setup {self.setup_s:.1f} s); {self.outcome()}"
        )


# --- input -------------------------------------------------------------------------------------


def read_requests(path: str | Path) -> list[BatchRequest]:
    """The rows of a Parquet, CSV or JSONL file (by extension), or a :class:`DataError` naming
    the file and the column: an unreadable file, an unknown column, neither ``user`` nor
    ``history``."""
    path = Path(path)
    kind = input_kind(path)
    columns = _read_jsonl(path) if kind == "jsonl" else _read_table(path, kind)
    check_columns(path, list(columns))
    n_rows = len(next(iter(columns.values())))
    if n_rows == 0:
        raise DataError("the input has no rows", file=str(path))
    values = [columns.get(name, [None] * n_rows) for name in INPUT_COLUMNS]
    return [request_of(i, *row) for i, row in enumerate(zip(*values))]


def request_of(row: int, request_id: Any, user: Any, history: Any) -> BatchRequest:
    """The request of input row ``row`` (from 0) as read: ``request_id`` defaults to the row."""
    return BatchRequest(row, str(row) if request_id is None else str(request_id), user, history)


def input_kind(path: Path) -> str:
    """'parquet', 'csv' or 'jsonl' by ``path``'s extension; a :class:`DataError` for another
    extension, a FileNotFoundError for a missing file."""
    kind = INPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"unsupported input extension {path.suffix or '(none)'!r}",
            file=str(path),
            hint=f"give a {', '.join(sorted(INPUT_SUFFIXES))} file",
        )
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    return kind


def input_columns(path: Path) -> list[str]:
    """The column names of an input file, checked (:func:`check_columns`), without keeping its
    rows: a Parquet or CSV file's schema; every line of a JSONL file is parsed."""
    kind = input_kind(path)
    if kind == "jsonl":
        names = list(_read_jsonl(path))
    else:
        try:
            if kind == "parquet":
                names = pq.read_schema(path).names
            else:
                with pa_csv.open_csv(path, convert_options=CSV_OPTIONS) as reader:
                    names = reader.schema.names
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"cannot read the {kind} file: {err}", file=str(path)) from None
    check_columns(path, names)
    return names


def check_columns(path: Path, names: Sequence[str]) -> None:
    """A :class:`DataError` naming the file and the column for an unknown column or neither
    ``user`` nor ``history``."""
    unknown = sorted(set(names) - set(INPUT_COLUMNS))
    if unknown:
        raise DataError(
            f"unknown column(s) {', '.join(map(repr, unknown))}",
            file=str(path),
            column=unknown[0],
            hint="the columns are user (a known user id), history (titles separated by ';', or a "
            "list) and request_id (optional)",
        )
    if "user" not in names and "history" not in names:
        raise DataError(
            "missing column: give 'user' (known user ids) and/or 'history' (typed titles)",
            file=str(path),
            column="user",
        )


def _read_table(path: Path, kind: str) -> dict[str, list[Any]]:
    try:
        if kind == "parquet":
            table = pq.read_table(path)
        else:
            table = pa_csv.read_csv(path, convert_options=CSV_OPTIONS)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"cannot read the {kind} file: {err}", file=str(path)) from None
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _read_jsonl(path: Path) -> dict[str, list[Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"line {line_no} is not valid JSON ({err.msg})", file=str(path)) from None
            if not isinstance(row, dict):
                raise DataError(f"line {line_no} is not a JSON object", file=str(path), value=row)
            rows.append(row)
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


# --- the job -----------------------------------------------------------------------------------


@dataclass
class BatchJob:
    """Rank every row of ``input_path`` with the settings of ``config`` into ``out`` (Parquet),
    ``chunk_size`` rows at a time (one LLM scoring call per chunk)."""

    input_path: Path
    out: Path
    config: RecommendConfig
    chunk_size: int = 64
    requests: list[BatchRequest] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.input_path, self.out = Path(self.input_path), Path(self.out)
        if self.chunk_size < 1:
            raise ConfigError("must be >= 1", parameter="chunk_size", value=self.chunk_size)
        self.requests = read_requests(self.input_path)  # fails fast: before any data or model loads

    @property
    def parts_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".parts")

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self.requests) / self.chunk_size)

    def identity(self) -> dict[str, Any]:
        """What the output depends on: the input's bytes, the settings, the chunk size."""
        digest = hashlib.sha256()
        with self.input_path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {
            "format": FORMAT_VERSION,
            "input_sha256": digest.hexdigest(),
            "config": json.loads(json.dumps(self.config.to_dict(), sort_keys=True, default=str)),
            "chunk_size": self.chunk_size,
        }

    def run(self, resume: bool = True, overwrite: bool = False, progress: bool = True) -> BatchSummary:
        """Compute the missing chunks, combine them into ``out``, and say what was done.

        ``resume``: keep the chunks a previous run with the same fingerprint finished (else
        recompute them all); ``overwrite``: discard chunks of another fingerprint (else refuse).
        """
        started = time.perf_counter()
        identity = self.identity()
        fingerprint = _digest(identity)
        with _locked(self.parts_dir):
            manifest = self._start(identity, fingerprint, resume, overwrite)
            missing = [c for c in range(self.n_chunks) if f"{c:05d}" not in manifest["finished"]]
            setup_s, rank_s = self._compute(missing, manifest, started, progress)
            self._combine(manifest)
            atomic_write_json(self.parts_dir / MANIFEST, manifest)
        totals: Counter[str] = Counter()
        for stats in manifest["finished"].values():
            totals.update({"reranked": stats["reranked"], "errors": stats["errors"], **stats["fallbacks"]})
        users = sum(len(self._chunk(c)) for c in missing)
        return BatchSummary(
            requests=len(self.requests),
            chunks=self.n_chunks,
            chunks_computed=len(missing),
            chunks_skipped=self.n_chunks - len(missing),
            users_computed=users,
            setup_s=round(setup_s, 3),
            rank_s=round(rank_s, 3),
            total_s=round(time.perf_counter() - started, 3),
            users_per_s=round(users / rank_s, 4) if users and rank_s > 0 else None,
            reranked=totals.pop("reranked", 0),
            errors=totals.pop("errors", 0),
            fallbacks=dict(sorted((k, v) for k, v in totals.items() if v)),
            output=str(self.out),
            manifest=str(self.parts_dir / MANIFEST),
            fingerprint=fingerprint,
        )

    def _compute(
        self, missing: list[int], manifest: dict[str, Any], started: float, progress: bool
    ) -> tuple[float, float]:
        """Rank and write the ``missing`` chunks, recording each in the manifest as it is
        written; (setup seconds since ``started``, ranking seconds)."""
        if not missing:
            return 0.0, 0.0
        ranker = ChunkRanker.build(self.config)
        setup_s, rank_s = time.perf_counter() - started, 0.0
        done = len(self.requests) - sum(len(self._chunk(c)) for c in missing)
        bar = tqdm(total=len(self.requests), initial=done, unit="user", desc="batch", disable=not progress)
        for c in missing:
            chunk_started = time.perf_counter()
            table, stats = ranker.rank(self._chunk(c))
            path = self.parts_dir / f"part-{c:05d}.parquet"
            with atomic_file(path) as tmp:
                pq.write_table(table, tmp)
            manifest["finished"][f"{c:05d}"] = {"file": path.name, "sha256": _file_sha256(path), **stats}
            atomic_write_json(self.parts_dir / MANIFEST, manifest)
            rank_s += time.perf_counter() - chunk_started
            bar.update(len(self._chunk(c)))
        bar.close()
        return setup_s, rank_s

    def _chunk(self, c: int) -> list[BatchRequest]:
        return self.requests[c * self.chunk_size : (c + 1) * self.chunk_size]

    def _start(self, identity: dict[str, Any], fingerprint: str, resume: bool, overwrite: bool) -> dict:
        """The manifest this run continues (finished chunks checked against their files), or a
        new one; refuses another job's chunks or output unless ``overwrite``."""
        path = self.parts_dir / MANIFEST
        try:
            old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except json.JSONDecodeError as err:
            raise DataError(
                f"the manifest is not valid JSON ({err.msg})",
                file=str(path),
                hint="--overwrite to discard its chunks",
            ) from None
        for stale in self.parts_dir.glob(".*.tmp"):  # a killed run's half-written files
            stale.unlink()
        for stale in self.out.parent.glob(f".{self.out.name}.*.tmp"):
            stale.unlink()
        if old is None and self.out.exists() and not overwrite:
            raise DataError(
                "the output exists and no manifest of llmrec batch is beside it",
                file=str(self.out),
                hint="choose another --out, or --overwrite to replace it",
            )
        if old is not None and old.get("fingerprint") != fingerprint and not overwrite:
            raise DataError(
                f"{self.parts_dir} holds chunks of another job ({_differences(old, identity)}); "
                "they are not mixed with this one",
                file=str(self.input_path),
                hint="rerun with that input and those settings to resume it, choose another --out, "
                "or --overwrite to discard its chunks",
            )
        finished: dict[str, Any] = {}
        if old is not None and old.get("fingerprint") == fingerprint and resume:
            for key, entry in old.get("finished", {}).items():
                part = self.parts_dir / entry["file"]
                if part.is_file() and _file_sha256(part) == entry["sha256"]:
                    finished[key] = entry
                else:
                    logger.warning("chunk %s is missing or damaged (%s): computing it again", key, part)
        for part in self.parts_dir.glob("part-*.parquet"):
            if part.name not in {entry["file"] for entry in finished.values()}:
                part.unlink()
        manifest = {
            "fingerprint": fingerprint,
            **identity,
            "input": str(self.input_path),
            "requests": len(self.requests),
            "chunks": self.n_chunks,
            "finished": finished,
            "output": None,
        }
        atomic_write_json(path, manifest)
        return manifest

    def _combine(self, manifest: dict[str, Any]) -> None:
        """The chunks, in order, as one Parquet file at ``out`` (atomic)."""
        files = (self.parts_dir / manifest["finished"][f"{c:05d}"]["file"] for c in range(self.n_chunks))
        write_chunks(self.out, (pq.read_table(f) for f in files))
        manifest["output"] = {"file": str(self.out), "sha256": _file_sha256(self.out)}


def write_chunks(out: Path, tables: Iterable[pa.Table]) -> None:
    """The chunks' output rows, in order, as one Parquet file at ``out`` (atomic): one row group
    per chunk, so the same rows in the same chunks give the same bytes."""
    with atomic_file(out) as tmp, pq.ParquetWriter(tmp, OUTPUT_SCHEMA) as writer:
        for table in tables:
            writer.write_table(table)


# --- ranking one chunk -------------------------------------------------------------------------


class ChunkRanker:
    """Ranks a chunk of requests as the service does: each row checked by the service's
    :class:`HistoryResolver`, the chunk's candidates retrieved together, their LLM scores in one
    call, then :meth:`Recommender.order`."""

    def __init__(self, parts: ServiceParts) -> None:
        self.parts = parts
        self.recommender = parts.recommender
        # a batch has no request-size limit of its own: every history is used, as `recommend`
        self.resolver = HistoryResolver(self.recommender.catalog, parts.users, sys.maxsize)

    @classmethod
    def build(cls, config: RecommendConfig) -> ChunkRanker:
        """Data, retriever and reranker of ``config``, built as ``llmrec recommend`` / ``serve``."""
        return cls(build_parts(config))

    def check(self, request: BatchRequest) -> History:
        """The row's history, or a :class:`RowError` naming the row, column and value."""
        body: dict[str, Any] = {}
        if request.user is not None:
            body["user"] = request.user
        if request.history is not None:
            body["history"] = [request.history] if isinstance(request.history, str) else request.history
        try:
            return self.resolver.resolve(RecommendRequest.model_validate(body))
        except ValidationError as err:
            raise RowError(request, validation_message(err.errors())[1]) from None
        except InputError as err:
            raise RowError(request, err.message) from None

    def rank(
        self, requests: Sequence[BatchRequest], schema: pa.Schema = OUTPUT_SCHEMA
    ) -> tuple[pa.Table, dict[str, Any]]:
        """The output rows of ``requests`` and their counts (reranked, fallbacks by reason, errors);
        ``schema``: :data:`OUTPUT_SCHEMA`, or :data:`ROW_SCHEMA` to keep each request's input row."""
        checked, errors = self.checked(requests)
        lists, reasons = self._rank_checked([h for _, h in checked])
        ranked = {req.row: (items, reason) for (req, _), items, reason in zip(checked, lists, reasons)}
        rows: list[dict[str, Any]] = []
        fallbacks: Counter[str] = Counter()
        for request in requests:
            items, reason = ranked.get(request.row, (None, None))
            rows.extend(request_rows(request, items, reason, errors.get(request.row)))
            if reason is not None:
                fallbacks[reason] += 1
        stats = {
            "requests": len(requests),
            "rows": len(rows),
            "reranked": sum(1 for _, reason in ranked.values() if reason is None),
            "fallbacks": dict(sorted(fallbacks.items())),
            "errors": len(errors),
        }
        return pa.Table.from_pylist(rows, schema=schema), stats

    def checked(
        self, requests: Sequence[BatchRequest]
    ) -> tuple[list[tuple[BatchRequest, History]], dict[int, str]]:
        """The valid requests with their histories, and the error of each other one by input row."""
        checked: list[tuple[BatchRequest, History]] = []
        errors: dict[int, str] = {}
        for request in requests:
            try:
                checked.append((request, self.check(request)))
            except RowError as err:
                errors[request.row] = str(err)
        return checked, errors

    def _rank_checked(self, histories: list[History]) -> tuple[list[dict], list[str | None]]:
        """Ranked lists (``RankedList.to_dict()``) and fallback reasons of valid histories."""
        if not histories:
            return [], []
        rec = self.recommender
        candidates = rec.retrieve(histories, self.parts.allowed)
        scored = [i for i in range(len(histories)) if (candidates.items[i] >= 0).any()]
        reasons: list[str | None] = [None] * len(histories)
        llm: list[np.ndarray | None] = [None] * len(histories)
        if rec.reranker is None:
            reasons = ["llm_disabled"] * len(histories)
        elif scored:
            try:
                scores = self._llm_scores([histories[i] for i in scored], candidates.items[scored])
                for i, values in zip(scored, scores):
                    llm[i] = values
            except Exception as err:  # noqa: BLE001 - any LLM failure: the retriever's order, with the reason
                logger.warning(
                    "LLM scoring of a chunk of %d failed, retriever order kept: %r", len(scored), err
                )
                for i in scored:
                    reasons[i] = "llm_error"
        lists = ordered_lists(candidates, llm, rec.retriever_weight, rec.catalog, self.parts.default_n)
        return lists, reasons

    def _llm_scores(self, histories: list[History], items: np.ndarray) -> list[np.ndarray]:
        """One scoring call for the chunk; with shuffled prompts one call per user, since the
        reranker seeds each user's shuffles by its position in the call (as the service)."""
        rec, params = self.recommender, self.parts.params
        if params.shuffles > 0:
            return [rec.llm_scores([h], items[i : i + 1], params)[0] for i, h in enumerate(histories)]
        return rec.llm_scores(histories, items, params)


class RowError(Exception):
    """A row the job cannot rank: written with this message, the job goes on."""

    def __init__(self, request: BatchRequest, message: str) -> None:
        super().__init__(f"row {request.row} (request_id {request.request_id!r}): {message}")


def ordered_lists(
    candidates: Candidates,
    llm_scores: Sequence[np.ndarray | None],
    retriever_weight: float,
    catalog: ItemCatalog,
    n: int | None,
) -> list[dict]:
    """The top-``n`` list (``RankedList.to_dict()``) of each row of ``candidates``: ordered by its
    LLM scores fused with the retriever's order (:func:`~llmrec.pipeline.order_candidates`), or
    in the retriever's order where its scores are None."""
    from llmrec.pipeline import order_candidates

    lists: list[dict] = [{}] * len(llm_scores)
    with_llm = [i for i, s in enumerate(llm_scores) if s is not None]
    without = [i for i, s in enumerate(llm_scores) if s is None]
    for positions, llm in ((with_llm, [llm_scores[i] for i in with_llm]), (without, None)):
        if positions:
            ranking = order_candidates(_take(candidates, positions), llm, retriever_weight)
            for i, ranked in zip(positions, ranking.lists(catalog, n)):
                lists[i] = ranked.to_dict()
    return lists


def request_rows(
    request: BatchRequest, ranked: dict | None, reason: str | None, error: str | None
) -> list[dict[str, Any]]:
    """The output rows of one request: its error row, or one row per ranked item (one item-less
    row when nothing is left to recommend), reranked unless a fallback ``reason`` is given."""
    if error is not None:
        return [_row(request, error=error)]
    flags = {"reranked": reason is None, "reason": reason}
    rows = [_row(request, **flags, **item) for item in (ranked or {}).get("items", [])]
    return rows or [_row(request, **flags)]


# --- helpers -----------------------------------------------------------------------------------


def _row(request: BatchRequest, **values: Any) -> dict[str, Any]:
    user = request.user
    row = {
        "row": request.row,
        "request_id": request.request_id,
        "user": None if user is None else str(user),
        "reranked": False,
        **values,
    }
    score = row.get("score")
    if score is not None and not math.isfinite(score):
        row["score"] = None
    return row


def _take(candidates: Candidates, rows: Sequence[int]) -> Candidates:
    index = np.asarray(rows, dtype=np.int64)
    return Candidates(candidates.items[index], candidates.scores[index], candidates.fallback[index])


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between a manifest and this job's identity, in words."""
    out = []
    if old.get("format") != new["format"]:
        out.append(f"format {old.get('format')} vs {new['format']}")
    if old.get("input_sha256") != new["input_sha256"]:
        out.append(f"the input's bytes differ from {old.get('input', 'its input')}")
    if old.get("chunk_size") != new["chunk_size"]:
        out.append(f"chunk size {old.get('chunk_size')} vs {new['chunk_size']}")
    before, now = old.get("config") or {}, new["config"]
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        out.append("settings " + ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed))
    return "; ".join(out) or "another fingerprint"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created): two jobs never write one output. A job
    refused before writing anything leaves no folder behind."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with (folder / LOCK).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataError(
                    "another llmrec batch is writing this output", file=str(folder), hint="wait for it to end"
                ) from None
            yield
    except BaseException:
        if created and [p.name for p in folder.iterdir()] == [LOCK]:
            (folder / LOCK).unlink()
            folder.rmdir()
        raise
