"""Top-k inner-product search over item vectors: a FAISS index when installed, exact otherwise.

``"exact"`` multiplies the queries by every item vector (NumPy), which is what scoring does
anyway and is fast up to a few hundred thousand items. ``"flat"`` is FAISS's exact index
(the same items, BLAS-tiled), ``"hnsw"`` FAISS's graph index (approximate: a small loss of
recall for sub-linear queries on large catalogs; built on one thread, so deterministic).
Both FAISS kinds fall back to ``"exact"`` with a warning when the ``faiss-cpu`` package is
missing, so a catalog never fails to rank.
"""

from __future__ import annotations

import warnings

import numpy as np

from llmrec.errors import ConfigError, LlmrecWarning

INDEX_KINDS = ("exact", "flat", "hnsw")
_BLOCK = 256


def faiss_available() -> bool:
    """Whether the FAISS package imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class VectorIndex:
    """Inner-product top-k over ``vectors`` (items x dim, float32).

    Parameters
    ----------
    vectors:
        One row per item; unit rows make the inner product a cosine similarity.
    kind:
        One of :data:`INDEX_KINDS`.
    hnsw_m, ef_search:
        HNSW graph degree and search breadth (``"hnsw"`` only; larger = more exact, slower).
    """

    def __init__(
        self, vectors: np.ndarray, kind: str = "exact", hnsw_m: int = 32, ef_search: int = 128
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ConfigError(f"must be one of {INDEX_KINDS}", parameter="index", value=kind)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.requested = kind
        """The kind asked for; :attr:`kind` is the one in use (``"exact"`` without FAISS)."""
        self.kind = kind
        self._faiss = None
        if kind != "exact" and not faiss_available():
            warnings.warn(
                f"index {kind!r} needs faiss (pip install faiss-cpu); searching exactly instead",
                LlmrecWarning,
                stacklevel=2,
            )
            self.kind = "exact"
        if self.kind != "exact":
            import faiss

            dim = self.vectors.shape[1]
            if self.kind == "flat":
                index = faiss.IndexFlatIP(dim)
                index.add(self.vectors)
            else:
                index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = ef_search
                # A parallel build links the graph in a thread-dependent order; one thread makes
                # the graph, and so the candidates, the same on every run and machine.
                threads = faiss.omp_get_max_threads()
                faiss.omp_set_num_threads(1)
                try:
                    index.add(self.vectors)
                finally:
                    faiss.omp_set_num_threads(threads)
            self._faiss = index

    def __len__(self) -> int:
        return len(self.vectors)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, items)``, each ``len(queries) x k``, best first; -1 / -inf pad rows with
        fewer than ``k`` eligible items. ``allowed``: boolean item mask searched within."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self) if allowed is None else int(np.count_nonzero(allowed)))
        n = len(queries)
        if k <= 0 or n == 0:
            return np.full((n, max(k, 0)), -np.inf, np.float32), np.full((n, max(k, 0)), -1, np.int64)
        if self._faiss is None:
            out_scores = np.empty((n, k), dtype=np.float32)
            out_items = np.empty((n, k), dtype=np.int64)
            for lo in range(0, n, _BLOCK):  # a block of queries x items at a time: bounded memory
                scores = queries[lo : lo + _BLOCK] @ self.vectors.T
                if allowed is not None:
                    scores[:, ~allowed] = -np.inf
                part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                vals = np.take_along_axis(scores, part, axis=1)
                order = np.argsort(-vals, axis=1, kind="stable")
                out_scores[lo : lo + _BLOCK] = np.take_along_axis(vals, order, axis=1)
                out_items[lo : lo + _BLOCK] = np.take_along_axis(part, order, axis=1)
            return out_scores, out_items
        params = None
        if allowed is not None:
            import faiss

            selector = faiss.IDSelectorBatch(np.flatnonzero(allowed).astype(np.int64))
            params = (
                faiss.SearchParametersHNSW(sel=selector, efSearch=self._faiss.hnsw.efSearch)
                if self.kind == "hnsw"
                else faiss.SearchParameters(sel=selector)
            )
        scores, items = self._faiss.search(queries, k, params=params)
        return np.where(items >= 0, scores, -np.inf).astype(np.float32), items.astype(np.int64)
