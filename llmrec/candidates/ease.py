"""EASE (Steck 2019): closed-form shallow item-item autoencoder."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from scipy.linalg import lapack
from tqdm.auto import tqdm

from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.candidates.itemknn import history_matrix
from llmrec.candidates.persistence import load_array
from llmrec.data.catalog import History
from llmrec.errors import ConfigError

logger = logging.getLogger(__name__)

SINGLE_THREAD_ITEMS = 12_000
"""Above this many items the inverse runs BLAS on one thread (see :func:`invert_spd_inplace`)."""
PROGRESS_MIN_ITEMS = 2_000
"""Fits of at least this many items show a progress bar (the estimate in its description)."""


def fit_memory_bytes(n_items: int, interactions: int = 0) -> int:
    """Peak memory of fitting EASE on ``n_items`` items: the float64 Gram matrix, inverted in
    place (``8 n^2``), plus the float32 weights made from it (``4 n^2``), plus the sparse
    interaction matrix (~``24`` bytes per interaction)."""
    return 12 * n_items**2 + 24 * interactions


def available_memory_bytes() -> int | None:
    """Memory the system can still give this process (Linux ``MemAvailable``; None if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def invert_spd_inplace(gram: np.ndarray) -> np.ndarray:
    """Inverse of the symmetric positive-definite ``gram`` (float64), computed in its memory.

    LAPACK's Cholesky (``dpotrf`` + ``dpotri``) on the Fortran-ordered view of ``gram`` (itself
    or its transpose: the same matrix), then the upper triangle mirrored in column blocks: no
    second n x n array. The same numbers as ``scipy.linalg.inv``, which uses these routines for
    such matrices. Above :data:`SINGLE_THREAD_ITEMS` items BLAS runs on one thread: the threaded
    ``dpotrf`` of scipy 1.17's OpenBLAS 0.3.30 crashed (segfault) at 16,000 items.
    """
    view = gram if gram.flags.f_contiguous else gram.T
    n = len(gram)
    with _blas_threads(1 if n > SINGLE_THREAD_ITEMS else None):
        factor, info = lapack.dpotrf(view, lower=False, overwrite_a=True, clean=False)
        if info == 0:
            view, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0 or not np.shares_memory(view, gram):
        raise np.linalg.LinAlgError(f"Cholesky inverse failed (LAPACK info={info})")
    block = max(1, 2**22 // max(n, 1))
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        view[hi:, lo:hi] = view[lo:hi, hi:].T
        square = view[lo:hi, lo:hi]
        lower = np.tril_indices(hi - lo, -1)
        square[lower] = square.T[lower]
    return gram


@contextmanager
def _blas_threads(limit: int | None) -> Iterator[None]:
    """BLAS threads limited to ``limit`` inside the block (None: unchanged)."""
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit, user_api="blas"):
        yield


class EASEGenerator(CandidateGenerator):
    """EASE weights with recency-weighted histories: ``ease`` is *not* plain EASE.

    Fitting is Steck's EASE: ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``,
    ``diag(B) = 0``. Scoring weights each history item ``recency_decay ** age`` (0.7 by
    default: the last item counts 1, the one before 0.7, ...), which scores about 2.4x
    plain EASE's NDCG@10 on ml-1m-style data, where the next item follows the last few.
    Plain EASE (binary histories, ``recency_decay=1``) is registered as ``ease-plain``
    (:class:`PlainEASEGenerator`); report it under that name when comparing with papers.

    Only the items with at least one training interaction are fitted and ranked: an item
    without any has a zero row and column in ``B`` anyway. Memory and time grow with the
    square / cube of their number: fitting inverts a dense float64 Gram matrix in place and
    keeps ``B`` as float32 (peak about ``12 * n**2`` bytes, :func:`fit_memory_bytes`: 3.1 GB
    at 16,000 items, 4.8 GB at 20,000). The estimate is logged before fitting (and shown on
    the progress bar of large fits); a fit that would need more than the memory available
    raises :class:`~llmrec.errors.ConfigError` before allocating it. Above ``max_items``
    such items ``fit`` raises it too; raise ``max_items`` if the machine has room
    (``generator_params: {ease: {max_items: N}}`` in a ``--config`` YAML), or use
    ``itemknn`` / ``mf`` on large catalogs (e.g. the 38k items of amazon-arts-office).

    Parameters
    ----------
    l2:
        Ridge penalty on the item-item weights.
    recency_decay:
        In (0, 1]; history item weight ``recency_decay ** age`` at scoring time (1 = binary).
    max_items:
        Largest catalog ``fit`` accepts.
    """

    name = "ease"
    saved_arrays = ("weights", "fitted_items")

    def __init__(self, l2: float = 300.0, recency_decay: float = 0.7, max_items: int = 20_000) -> None:
        super().__init__()
        if l2 <= 0:
            raise ConfigError("must be > 0", parameter="l2", value=l2)
        if not 0.0 < recency_decay <= 1.0:
            raise ConfigError("must be in (0, 1]", parameter="recency_decay", value=recency_decay)
        if max_items < 1:
            raise ConfigError("must be >= 1", parameter="max_items", value=max_items)
        self.l2 = l2
        self.recency_decay = recency_decay
        self.max_items = max_items
        self.weights: np.ndarray | None = None
        """n x n float32 EASE weight matrix ``B`` (zero diagonal) of the fitted items."""
        self.fitted_items: np.ndarray | None = None
        """Catalog indices of the n fitted items (those with a training interaction)."""

    def _fit(self, train: TrainData) -> None:
        x = train.matrix().astype(np.float64)
        items = np.flatnonzero(np.diff(x.tocsc().indptr))
        n = len(items)
        if n > self.max_items:
            raise ConfigError(
                f"EASE needs a dense {n} x {n} matrix inverse (the items with a training "
                f"interaction, ~{fit_memory_bytes(n, x.nnz) / 1e9:.1f} GB); the limit is "
                f"max_items={self.max_items}. "
                f"Use itemknn or mf for this catalog, or, if memory allows, raise the limit: "
                f"`generator_params: {{{self.name}: {{max_items: {n}}}}}` in a --config YAML",
                parameter="max_items",
                value=self.max_items,
            )
        self._check_memory(n, x.nnz)
        with tqdm(
            total=3,
            desc=f"{self.name} fit: {n} items, ~{fit_memory_bytes(n, x.nnz) / 1e9:.1f} GB",
            leave=False,
            disable=n < PROGRESS_MIN_ITEMS,
        ) as bar:
            x = x[:, items]
            gram = (x.T @ x).toarray()
            del x
            gram[np.diag_indices(n)] += self.l2
            bar.update()
            p = invert_spd_inplace(gram)
            bar.update()
            # B = P / -diag(P), column-wise, in place (same numbers as a new array).
            p /= -np.diag(p).copy()
            p[np.diag_indices(n)] = 0.0
            # C order: scoring multiplies a sparse matrix by it, which scipy copies otherwise.
            self.weights = np.ascontiguousarray(p, dtype=np.float32)
            bar.update()
        self.fitted_items = items

    def _check_memory(self, n: int, interactions: int) -> None:
        """Log the memory estimate of fitting ``n`` items; refuse a fit that cannot fit in memory."""
        need = fit_memory_bytes(n, interactions)
        free = available_memory_bytes()
        logger.info(
            "%s: fitting %d items needs ~%.2f GB (%s GB available)",
            self.name,
            n,
            need / 1e9,
            "?" if free is None else f"{free / 1e9:.1f}",
        )
        if free is not None and need > free:
            raise ConfigError(
                f"EASE on {n} items (those with a training interaction) needs ~{need / 1e9:.1f} GB "
                f"to fit, only {free / 1e9:.1f} GB of memory is available. Free memory, use itemknn "
                f"or mf for this catalog, or lower the limit below {n} so that fused skips EASE: "
                f"`generator_params: {{{self.name}: {{max_items: {n - 1}}}}}` in a --config YAML",
                parameter="max_items",
                value=self.max_items,
            )

    def score(self, histories: Sequence[History]) -> np.ndarray:
        self._check_fitted()
        h = history_matrix(histories, len(self.catalog), self.recency_decay).astype(np.float32)
        scores = np.zeros((len(histories), len(self.catalog)), dtype=np.float32)
        scores[:, self.fitted_items] = h[:, self.fitted_items] @ self.weights
        return scores

    def _load_state(self, folder: Path) -> None:
        if (folder / "fitted_items.npy").is_file():
            super()._load_state(folder)
        else:
            # Saved before fitted_items existed: weights over the whole catalog.
            self.weights = load_array(folder / "weights")
            self.fitted_items = np.arange(len(self.weights))
        # Saved by older versions in Fortran order (slow to score: see _fit).
        self.weights = np.ascontiguousarray(self.weights)


class PlainEASEGenerator(EASEGenerator):
    """Plain EASE (Steck 2019): binary histories, ``recency_decay=1``; registered as ``ease-plain``."""

    name = "ease-plain"

    def __init__(self, l2: float = 300.0, max_items: int = 20_000) -> None:
        super().__init__(l2=l2, recency_decay=1.0, max_items=max_items)
