"""Most-popular baseline: the same ranking for every user."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.data.catalog import History


class PopularityGenerator(CandidateGenerator):
    """Score = number of training users that interacted with the item.

    Rows whose history has no items (empty or free-text only) get zeros, like every
    other generator; the base class then ranks them by the same popularity order and
    flags them as ``fallback``.
    """

    name = "popularity"
    saved_arrays = ("counts",)

    def __init__(self) -> None:
        super().__init__()
        self.counts: np.ndarray | None = None

    def _fit(self, train: TrainData) -> None:
        self.counts = np.asarray(self.item_counts, dtype=np.float32)

    def score(self, histories: Sequence[History]) -> np.ndarray:
        self._check_fitted()
        out = np.zeros((len(histories), len(self.counts)), dtype=np.float32)
        rows = [r for r, h in enumerate(histories) if len(h.items)]
        out[rows] = self.counts
        return out
