"""The one interface every candidate generator implements.

Shape after `implicit`: the constructor takes hyper-parameters only,
``fit(train)`` learns, and the batch call ``candidates(histories, k)`` returns
a small typed result. Subclasses implement ``_fit`` and ``score``; ranking,
exclusion of seen items, domain restriction and the popularity fallback live
here once.
"""

from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from llmrec.candidates.persistence import load_array, save_array, save_generator
from llmrec.data.catalog import History, ItemCatalog
from llmrec.data.split import interaction_matrix
from llmrec.ranking import popularity_tie_rank, top_k


@dataclass
class TrainData:
    """What a generator is fit on: the catalog and every user's known sequence."""

    catalog: ItemCatalog
    sequences: list[np.ndarray]
    """Per user, item indices oldest first. Never contains a held-out item."""

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    def matrix(self) -> sp.csr_matrix:
        """Binary users x items CSR matrix of the sequences."""
        return interaction_matrix(self.sequences, self.n_items)

    def item_counts(self) -> np.ndarray:
        """Number of users that interacted with each item."""
        return np.asarray(self.matrix().sum(axis=0)).ravel()


@dataclass
class Candidates:
    """Result of :meth:`CandidateGenerator.candidates`: ``n_users x k`` arrays.

    ``items`` holds catalog indices (-1 = padding), ``scores`` the generator's
    scores (float32, -inf for padding). ``fallback[r]`` is True when row ``r``
    had no usable history and is the popularity ranking.
    """

    items: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray

    def item_ids(self, catalog: ItemCatalog) -> list[list[str]]:
        """Item ids per row, padding dropped."""
        return [[str(catalog.item_ids[i]) for i in row if i >= 0] for row in self.items]


def apply_masks(
    scores: np.ndarray, histories: Sequence[History], exclude_history: bool, allowed: np.ndarray | None
) -> np.ndarray:
    """Set seen items (when ``exclude_history``) and items outside ``allowed`` to -inf, in place."""
    if exclude_history:
        for r, hist in enumerate(histories):
            if len(hist.items):
                scores[r, hist.items] = -np.inf
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    return scores


def param_names(cls: type) -> list[str]:
    """Names of the constructor parameters of generator class ``cls``."""
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


class CandidateGenerator(ABC):
    """Base class: fit on training sequences, score all items, return top-k."""

    name: str = "generator"
    uses_text: bool = False
    """True when free-text histories (new users) carry signal for this generator."""
    saved_arrays: ClassVar[tuple[str, ...]] = ()
    """Attributes holding the learned state (numpy arrays or scipy.sparse matrices) :meth:`save` writes."""
    parallel_scoring: ClassVar[bool] = True
    """Whether two threads may call :meth:`masked_scores` at once (it only reads the fitted state)."""

    def __init__(self) -> None:
        self.catalog: ItemCatalog | None = None
        self.item_counts: np.ndarray | None = None
        self.tie_rank: np.ndarray | None = None

    def fit(self, train: TrainData) -> CandidateGenerator:
        """Learn from ``train``; returns ``self``."""
        self.catalog = train.catalog
        self.item_counts = train.item_counts()
        self.tie_rank = popularity_tie_rank(self.item_counts)
        self._fit(train)
        return self

    @abstractmethod
    def _fit(self, train: TrainData) -> None:
        """Generator-specific learning."""

    def params(self) -> dict[str, Any]:
        """The constructor's hyper-parameters (what :meth:`save` records)."""
        return {p: getattr(self, p) for p in param_names(type(self))}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted generator and its catalog to the folder ``path``, atomically; returns ``path``.

        :func:`~llmrec.candidates.load_generator` reads it back, scoring exactly as now.
        An existing folder is replaced only if it is empty or a previous save.
        """
        return save_generator(self, path)

    @classmethod
    def _from_saved(cls, params: dict[str, Any], folder: Path, catalog: ItemCatalog) -> CandidateGenerator:
        """An unfitted generator with the saved ``params`` (fused: components read from ``folder``)."""
        return cls(**params)

    def _save_state(self, folder: Path) -> None:
        """Write the learned state to ``folder`` (default: each of :attr:`saved_arrays`)."""
        for attr in self.saved_arrays:
            save_array(folder / attr, getattr(self, attr))

    def _load_state(self, folder: Path) -> None:
        """Read back what :meth:`_save_state` wrote (``catalog`` and ``item_counts`` are set already)."""
        for attr in self.saved_arrays:
            setattr(self, attr, load_array(folder / attr))

    @abstractmethod
    def score(self, histories: Sequence[History]) -> np.ndarray:
        """Dense ``len(histories) x n_items`` float32 scores (higher = better).

        Rows with no signal are all zeros; the popularity tie-break then ranks them.
        """

    def _check_fitted(self) -> None:
        if self.catalog is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(train) first")

    def masked_scores(
        self,
        histories: Sequence[History],
        exclude_history: bool = True,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """Scores with seen items (and items outside ``allowed``) set to -inf."""
        self._check_fitted()
        return apply_masks(
            np.asarray(self.score(histories), dtype=np.float32), histories, exclude_history, allowed
        )

    def candidates(
        self,
        histories: Sequence[History],
        k: int = 20,
        exclude_history: bool = True,
        allowed: np.ndarray | None = None,
    ) -> Candidates:
        """Top-``k`` unseen items per history.

        ``allowed`` is an optional boolean item mask (e.g. the target domain's items).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = self.masked_scores(histories, exclude_history, allowed)
        finite = np.where(np.isfinite(scores), scores, 0.0)
        fallback = ~np.any(finite != 0.0, axis=1)
        items, vals = top_k(scores, k, self.tie_rank)
        return Candidates(items=items, scores=vals, fallback=fallback)


class CompositeGenerator(CandidateGenerator):
    """A generator whose scores combine other generators' (fusion, new-item slots).

    The history and ``allowed`` masks must reach the components, so that each one's top
    items are taken among eligible items (or a domain restriction would empty the result):
    subclasses implement :meth:`_compose` with the masks as arguments.
    """

    parallel_scoring: ClassVar[bool] = False

    def score(self, histories: Sequence[History]) -> np.ndarray:
        """Combined scores with history items excluded inside each component (as ``candidates`` does)."""
        self._check_fitted()
        return self._compose(histories, exclude_history=True, allowed=None)

    def masked_scores(
        self,
        histories: Sequence[History],
        exclude_history: bool = True,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        self._check_fitted()
        return apply_masks(
            self._compose(histories, exclude_history, allowed), histories, exclude_history, allowed
        )

    @abstractmethod
    def _compose(
        self, histories: Sequence[History], exclude_history: bool, allowed: np.ndarray | None
    ) -> np.ndarray:
        """``len(histories) x n_items`` scores from the components, masked as asked."""
