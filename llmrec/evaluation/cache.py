"""A content-addressed cache for evaluation: fitted generators, candidate lists, LLM scores.

Every entry lives under a key that hashes what produced it (data fingerprint, split, stage,
generator and its parameters, model/adapter/template hashes, the exact candidate lists), so a
re-run recomputes only what changed and a changed input can never be served a stale result.
Entries are written atomically; LLM scores are written in chunks, so an interrupted scoring run
resumes at the first missing chunk. ``EvalCache(None)`` computes everything and stores nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.io import atomic_dir, jsonable

logger = logging.getLogger(__name__)

FORMAT = 1
"""Part of every key: bumped when what an entry holds changes meaning."""


def default_cache_dir() -> Path:
    """``$LLMREC_EVAL_CACHE``, else ``eval/`` in llmrec's cache (``$LLMREC_CACHE``, else
    ``~/.cache/llmrec``)."""
    from llmrec.llm.models import cache_dir

    return Path(os.environ.get("LLMREC_EVAL_CACHE") or cache_dir() / "eval")


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts; numpy arrays are hashed by dtype, shape and bytes."""
    h = hashlib.sha256(str(FORMAT).encode())
    for part in parts:
        _feed(h, part)
    return h.hexdigest()[:20]


def _feed(h: Any, part: Any) -> None:
    if isinstance(part, np.ndarray):
        arr = np.ascontiguousarray(part)
        h.update(f"nd:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes() if arr.dtype != object else json.dumps(arr.tolist()).encode())
    elif isinstance(part, (list, tuple)) and any(isinstance(p, np.ndarray) for p in part):
        h.update(f"seq:{len(part)}".encode())
        for p in part:
            _feed(h, p)
    else:
        h.update(json.dumps(part, sort_keys=True, default=jsonable).encode())
    h.update(b"|")


def file_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """Hash of the bytes of files (an adapter's weights and config, a template)."""
    h = hashlib.sha256()
    for path in sorted(map(Path, paths)):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


def data_fingerprint(data: Any) -> str:
    """Hash of a :class:`~llmrec.data.schema.RecDataset`'s tables (after cleaning)."""
    import pyarrow as pa

    h = hashlib.sha256()
    for ds in (data.interactions, data.items):
        table = ds.with_format("arrow")[:]  # respects a filter's indices mapping
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        h.update(sink.getvalue())
    h.update(str(data.order_by).encode())
    return h.hexdigest()[:20]


class EvalCache:
    """Cache rooted at ``root`` (None: disabled), with hit/miss counts and seconds per kind."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = None if root is None else Path(root)
        self.stats: dict[str, dict[str, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _count(self, kind: str, field: str, seconds: float = 0.0) -> None:
        entry = self.stats.setdefault(kind, {"hits": 0, "misses": 0, "seconds": 0.0})
        entry[field] += 1
        entry["seconds"] = round(entry["seconds"] + seconds, 3)

    def folder(self, kind: str, key: str) -> Path | None:
        return None if self.root is None else self.root / kind / key

    def arrays(
        self, kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """The arrays stored under ``kind/key``, computed (and stored) when absent."""
        start = time.perf_counter()
        folder = self.folder(kind, key)
        if folder is not None and (folder / "arrays.npz").is_file():
            with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
                out = {name: npz[name] for name in npz.files}
            self._count(kind, "hits", time.perf_counter() - start)
            return out
        out = compute()
        if folder is not None:
            with atomic_dir(folder, marker="arrays.npz", keep_existing=True) as tmp:
                np.savez(tmp / "arrays.npz", **out)
        self._count(kind, "misses", time.perf_counter() - start)
        return out

    def generator(self, key: str, fit: Callable[[], Any], load: Callable[[Path], Any]) -> Any:
        """A fitted generator stored under ``generators/key`` (saved with its ``save``)."""
        start = time.perf_counter()
        folder = self.folder("generators", key)
        if folder is not None and (folder / "generator.json").is_file():
            gen = load(folder)
            self._count("generators", "hits", time.perf_counter() - start)
            return gen
        gen = fit()
        if folder is not None:
            folder.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # a concurrent run saved it first
                gen.save(folder)
        self._count("generators", "misses", time.perf_counter() - start)
        return gen

    def chunked_rows(
        self,
        kind: str,
        key: str,
        n_rows: int,
        chunk: int,
        compute: Callable[[int, int], np.ndarray],
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Rows ``0..n_rows`` of a 2-D float array computed ``chunk`` rows at a time by
        ``compute(lo, hi)``; each chunk is stored as it finishes, so a killed run resumes at the
        first missing chunk. ``progress(rows)`` is called for every chunk, stored or computed."""
        start = time.perf_counter()
        folder = self.folder(kind, key)
        parts: list[np.ndarray] = []
        computed = 0
        for lo in range(0, n_rows, chunk):
            hi = min(lo + chunk, n_rows)
            path = None if folder is None else folder / f"rows-{lo:08d}-{hi:08d}.npy"
            if path is not None and path.is_file():
                parts.append(np.load(path, allow_pickle=False))
            else:
                part = np.asarray(compute(lo, hi))
                computed += hi - lo
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                    np.save(tmp, part, allow_pickle=False)
                    os.replace(tmp, path)
                parts.append(part)
            if progress is not None:
                progress(hi - lo)
        self._count(kind, "misses" if computed else "hits", time.perf_counter() - start)
        if computed and computed < n_rows:
            self.stats[kind]["resumed_rows"] = self.stats[kind].get("resumed_rows", 0) + n_rows - computed
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(parts, axis=0)
