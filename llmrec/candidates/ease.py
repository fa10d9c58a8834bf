"""EASE (Steck 2019): closed-form shallow item-item autoencoder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg

from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.candidates.itemknn import history_matrix
from llmrec.data.catalog import History
from llmrec.errors import ConfigError


class EASEGenerator(CandidateGenerator):
    """EASE: ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``, ``diag(B) = 0``.

    Memory and time grow with the square / cube of the number of items: fitting holds a
    dense items x items float64 Gram matrix and its inverse (about ``16 * n_items**2`` bytes,
    6.4 GB at 20,000 items) and keeps ``B`` as float32. Above ``max_items`` items ``fit``
    raises :class:`~llmrec.errors.ConfigError` instead of exhausting memory; raise
    ``max_items`` if the machine has room, or use ``itemknn`` / ``mf`` on large catalogs
    (e.g. the 38k items of amazon-arts-office).

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
    saved_arrays = ("weights",)

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
        """items x items float32 EASE weight matrix ``B`` (zero diagonal)."""

    def _fit(self, train: TrainData) -> None:
        n_items = train.n_items
        if n_items > self.max_items:
            raise ConfigError(
                f"EASE needs a dense {n_items} x {n_items} matrix inverse "
                f"(~{16 * n_items**2 / 1e9:.1f} GB); the limit is max_items={self.max_items}. "
                "Use itemknn or mf for this catalog, or pass a larger max_items if memory allows",
                parameter="max_items",
                value=self.max_items,
            )
        x = train.matrix().astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices(n_items)] += self.l2
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        b = p / -np.diag(p)
        b[np.diag_indices(n_items)] = 0.0
        self.weights = b.astype(np.float32)

    def score(self, histories: Sequence[History]) -> np.ndarray:
        self._check_fitted()
        h = history_matrix(histories, len(self.catalog), self.recency_decay).astype(np.float32)
        return np.asarray(h @ self.weights, dtype=np.float32)
