"""A content-addressed cache for evaluation: fitted generators, candidate lists, LLM scores.

Every entry lives under a key that hashes what produced it (data fingerprint, split, stage,
generator and its parameters, model/adapter/template hashes, the exact candidate lists), so a
re-run recomputes only what changed and a changed input can never be served a stale result.
Entries are written atomically; LLM scores are written in chunks, so an interrupted scoring run
resumes at the first missing chunk. ``EvalCache(None)`` computes everything and stores nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.io import atomic_dir

logger = logging.getLogger(__name__)

_SECONDS = "_compute_seconds"
"""Stored beside every entry: what computing it took."""


def default_cache_dir() -> Path:
    """``$LLMREC_EVAL_CACHE``, else ``eval/`` in llmrec's cache (``$LLMREC_CACHE``, else
    ``~/.cache/llmrec``)."""
    from llmrec.llm.models import cache_dir

    return Path(os.environ.get("LLMREC_EVAL_CACHE") or cache_dir() / "eval")


@functools.cache
def blas_kernels() -> tuple[str, ...]:
    """The BLAS libraries' kernels, e.g. ``("openblas:SkylakeX",)``: part of every fitted
    generator's key, because MF's float32 ALS (and EASE's inverse) sum in another order under
    other kernels (OpenBLAS gives AMD Zen its Haswell kernels unless ``OPENBLAS_CORETYPE`` says
    otherwise), so a cache filled under one must not serve a run under another. SciPy's BLAS
    is loaded first, so the answer does not depend on what the process imported before."""
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS beside NumPy's)
    from threadpoolctl import threadpool_info

    found = {
        f"{lib.get('internal_api')}:{lib.get('architecture')}"
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    }
    return tuple(sorted(found))


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

    def _count(self, kind: str, field: str, seconds: float = 0.0, computed: float = 0.0) -> None:
        """Count a hit or miss; ``seconds`` spent now, ``computed`` what computing it took (when
        it was computed, for a hit), so a report can state both wall times."""
        entry = self.stats.setdefault(kind, {"hits": 0, "misses": 0, "seconds": 0.0, "computed_seconds": 0.0})
        entry[field] += 1
        entry["seconds"] = round(entry["seconds"] + seconds, 3)
        entry["computed_seconds"] = round(entry["computed_seconds"] + computed, 3)

    def folder(self, kind: str, key: str) -> Path | None:
        return None if self.root is None else self.root / kind / key

    def has_arrays(self, kind: str, key: str) -> bool:
        """Whether :meth:`arrays` of ``kind/key`` would be read from the cache."""
        folder = self.folder(kind, key)
        return folder is not None and (folder / "arrays.npz").is_file()

    def arrays(
        self, kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """The arrays stored under ``kind/key``, computed (and stored) when absent."""
        start = time.perf_counter()
        folder = self.folder(kind, key)
        if folder is not None and (folder / "arrays.npz").is_file():
            with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
                out = {name: npz[name] for name in npz.files}
            computed = float(out.pop(_SECONDS, 0.0))
            self._count(kind, "hits", time.perf_counter() - start, computed)
            return out
        out = compute()
        seconds = time.perf_counter() - start
        if folder is not None:
            with atomic_dir(folder, marker="arrays.npz", keep_existing=True) as tmp:
                np.savez(tmp / "arrays.npz", **out, **{_SECONDS: np.float64(seconds)})
        self._count(kind, "misses", time.perf_counter() - start, seconds)
        return out

    def generator(self, key: str, fit: Callable[[], Any], load: Callable[[Path], Any]) -> Any:
        """A fitted generator stored under ``generators/key`` (saved with its ``save``)."""
        start = time.perf_counter()
        folder = self.folder("generators", key)
        timing = None if folder is None else folder.parent / f"{key}.seconds"
        if folder is not None and (folder / "generator.json").is_file():
            gen = load(folder)
            computed = float(timing.read_text()) if timing.is_file() else 0.0
            self._count("generators", "hits", time.perf_counter() - start, computed)
            return gen
        gen = fit()
        seconds = time.perf_counter() - start
        if folder is not None:
            folder.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # a concurrent run saved it first
                gen.save(folder)
            timing.write_text(f"{seconds:.3f}")
        self._count("generators", "misses", time.perf_counter() - start, seconds)
        return gen

    def chunked_rows(
        self,
        kind: str,
        key: str,
        n_rows: int,
        chunk: int,
        compute: Callable[[int, int], np.ndarray],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, float]:
        """Rows ``0..n_rows`` of a 2-D float array computed ``chunk`` rows at a time by
        ``compute(lo, hi)``, and the seconds computing them took (measured when each chunk was
        computed). Each chunk is stored as it finishes, so a killed run resumes at the first
        missing chunk. ``progress(rows)`` is called for every chunk, stored or computed."""
        start = time.perf_counter()
        folder = self.folder(kind, key)
        parts: list[np.ndarray] = []
        computed_rows = 0
        compute_seconds = 0.0
        for lo in range(0, n_rows, chunk):
            hi = min(lo + chunk, n_rows)
            path = None if folder is None else folder / f"rows-{lo:08d}-{hi:08d}.npz"
            if path is not None and path.is_file():
                with np.load(path, allow_pickle=False) as npz:
                    part, seconds = npz["rows"], float(npz[_SECONDS])
            else:
                t0 = time.perf_counter()
                part = np.asarray(compute(lo, hi))
                seconds = time.perf_counter() - t0
                computed_rows += hi - lo
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
                    np.savez(tmp, rows=part, **{_SECONDS: np.float64(seconds)})
                    os.replace(tmp, path)
            parts.append(part)
            compute_seconds += seconds
            if progress is not None:
                progress(hi - lo)
        field = "misses" if computed_rows else "hits"
        self._count(kind, field, time.perf_counter() - start, compute_seconds)
        if 0 < computed_rows < n_rows:
            self.stats[kind]["resumed_rows"] = (
                self.stats[kind].get("resumed_rows", 0) + n_rows - computed_rows
            )
        if not parts:
            return np.zeros((0, 0), dtype=np.float64), 0.0
        return np.concatenate(parts, axis=0), compute_seconds
