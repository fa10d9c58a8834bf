"""Sequential item-to-item transitions: what users picked next after the items just seen.

The collaborative components (EASE, item-kNN, MF) read a history as a set; the order in
which a user moves through the catalog is lost. This generator keeps it: it counts, over
the training sequences, how often item ``j`` came within ``max_gap`` steps after item
``i`` (nearer steps count more), normalises each item's row into next-item frequencies,
and scores a user's candidates from their last few items, the most recent counting most.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.candidates.itemknn import history_matrix
from llmrec.data.catalog import History
from llmrec.errors import ConfigError


class TransitionGenerator(CandidateGenerator):
    """Next-item frequencies from the user's most recent items.

    ``T[i, j] = sum_g gap_decay ** (g - 1) * #(j follows i after g steps)`` for ``g`` in
    ``1..max_gap``, each row divided by its sum; ``score(u, j) = sum_h recency_decay ** age(h)
    * T[h, j]`` over the user's ``last_n`` most recent items ``h`` (age 0 = the last one).

    Parameters
    ----------
    max_gap:
        Largest step between two items that still counts as a transition.
    gap_decay:
        In (0, 1]: weight of a transition ``g`` steps apart is ``gap_decay ** (g - 1)``.
    last_n:
        How many of the user's most recent items are read.
    recency_decay:
        In (0, 1]: weight of the history item ``age`` steps before the last one.
    """

    name = "transition"
    saved_arrays = ("transitions",)

    def __init__(
        self, max_gap: int = 3, gap_decay: float = 0.5, last_n: int = 5, recency_decay: float = 0.5
    ) -> None:
        super().__init__()
        for param, value in (("max_gap", max_gap), ("last_n", last_n)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError("must be an integer >= 1", parameter=param, value=value)
        for param, value in (("gap_decay", gap_decay), ("recency_decay", recency_decay)):
            if not 0.0 < value <= 1.0:
                raise ConfigError("must be in (0, 1]", parameter=param, value=value)
        self.max_gap = max_gap
        self.gap_decay = gap_decay
        self.last_n = last_n
        self.recency_decay = recency_decay
        self.transitions: sp.csr_matrix | None = None
        """items x items row-normalised next-item frequencies, float32."""

    def _fit(self, train: TrainData) -> None:
        rows, cols, vals = [], [], []
        for seq in train.sequences:
            seq = np.asarray(seq, dtype=np.int64)
            for gap in range(1, min(self.max_gap, len(seq) - 1) + 1):
                rows.append(seq[:-gap])
                cols.append(seq[gap:])
                vals.append(np.full(len(seq) - gap, self.gap_decay ** (gap - 1)))
        n = train.n_items
        if rows:
            counts = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
            )
        else:
            counts = sp.csr_matrix((n, n), dtype=np.float64)
        counts.setdiag(0.0)  # a re-watched item is not a recommendation
        counts.eliminate_zeros()
        totals = np.asarray(counts.sum(axis=1)).ravel()
        self.transitions = (sp.diags(1.0 / np.maximum(totals, 1e-12)) @ counts).tocsr().astype(np.float32)

    def score(self, histories: Sequence[History]) -> np.ndarray:
        self._check_fitted()
        recent = [History(items=np.asarray(h.items, dtype=np.int64)[-self.last_n :]) for h in histories]
        h = history_matrix(recent, len(self.catalog), self.recency_decay).astype(np.float32)
        return np.asarray((h @ self.transitions).toarray(), dtype=np.float32)
