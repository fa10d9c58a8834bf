"""Evaluation of the retrieval stage: every generator ranks all eligible items.

For each evaluated user the held-out item's rank is computed against all
items that are not in the user's history (and, cross-domain, that belong to
the target domain). The same top-``num_candidates`` lists are what the LLM
reranker would see, so their Recall@``num_candidates`` caps the reranker.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmrec.candidates.base import CandidateGenerator, CompositeGenerator
from llmrec.candidates.fusion import FusedGenerator
from llmrec.data.catalog import History
from llmrec.evaluation.metrics import DEFAULT_KS, recall_at_k, summarize_ranks
from llmrec.ranking import rank_of, top_k

RANK_THREADS = min(
    4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)
"""Threads that score batches at once in :func:`rank_methods` (this process's cores, at most 4)."""


@dataclass
class MethodResult:
    """Metrics of one generator on one group of users."""

    method: str
    users: int
    metrics: dict[str, float]
    candidate_recall: dict[str, float]
    user_coverage: float
    """Share of users ranked from their own history (not the popularity fallback)."""
    item_coverage: float
    """Share of eligible items that appear in at least one top-``num_candidates`` list."""
    score_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RankedUsers:
    """Raw output of :func:`rank_users`, kept for later stages (the reranker)."""

    ranks: np.ndarray
    candidates: np.ndarray
    fallback: np.ndarray
    seconds: float


def rank_users(
    generator: CandidateGenerator,
    histories: Sequence[History],
    targets: np.ndarray,
    allowed: np.ndarray | None = None,
    **options: Any,
) -> RankedUsers:
    """Rank of each target among all eligible items, plus top-``num_candidates`` lists.

    ``options``: ``num_candidates``, ``batch_size`` and ``desc`` of :func:`rank_methods`.
    """
    return rank_methods({generator.name: generator}, histories, targets, allowed, **options)[generator.name]


def rank_methods(
    generators: Mapping[str, CandidateGenerator],
    histories: Sequence[History],
    targets: np.ndarray,
    allowed: np.ndarray | None = None,
    *,
    num_candidates: int = 20,
    batch_size: int = 256,
    desc: str | None = None,
) -> dict[str, RankedUsers]:
    """:func:`rank_users` of several generators in one pass over the users, batch by batch.

    A fused generator whose components are among ``generators`` (the same objects) reads their
    scores of the batch instead of scoring again: the same numbers, each component scored once.
    Memory: one ``batch_size x n_items`` score block per generator.
    """
    n = len(histories)
    plain = {name: g for name, g in generators.items() if not isinstance(g, CompositeGenerator)}
    composite = {name: g for name, g in generators.items() if isinstance(g, CompositeGenerator)}
    ordered = [*plain.items(), *composite.items()]
    out = {name: _RankedBuilder(n, num_candidates) for name in generators}

    def rank_batch(lo: int) -> None:
        hi = min(lo + batch_size, n)
        given: dict[int, np.ndarray] = {}
        for name, gen in ordered:
            start = time.perf_counter()
            if isinstance(gen, FusedGenerator):
                scores = gen.masked_scores_given(histories[lo:hi], given, True, allowed)
            else:
                scores = gen.masked_scores(histories[lo:hi], exclude_history=True, allowed=allowed)
                given[id(gen)] = scores
            out[name].add(lo, hi, scores, targets[lo:hi], gen.tie_rank, start)

    batches = range(0, n, batch_size)
    # Batches are independent (each writes its own rows): several threads score them at once,
    # as most of the work is numpy / scipy that releases the GIL. Same numbers in any order.
    threads = RANK_THREADS if all(_parallel_safe(g) for g in generators.values()) else 1
    bar = tqdm(total=len(batches), desc=desc or ", ".join(generators), leave=False, unit="batch")
    with bar, ThreadPoolExecutor(max_workers=max(1, min(threads, len(batches)))) as pool:
        bar.disable = n <= batch_size
        for _ in pool.map(rank_batch, batches):
            bar.update()
    return {name: out[name].result() for name in generators}


def _parallel_safe(gen: CandidateGenerator) -> bool:
    """Whether ``gen`` and every component of it may score in two threads at once."""
    return type(gen).parallel_scoring and all(_parallel_safe(g) for g in getattr(gen, "generators", ()))


class _RankedBuilder:
    """The arrays of one generator's :class:`RankedUsers`, filled batch by batch."""

    def __init__(self, n: int, num_candidates: int) -> None:
        self.ranks = np.zeros(n, dtype=np.int64)
        self.candidates = np.full((n, num_candidates), -1, dtype=np.int64)
        self.fallback = np.zeros(n, dtype=bool)
        self.seconds = 0.0
        """Wall seconds of scoring and ranking, summed over batches (over threads too)."""
        self._lock = threading.Lock()

    def add(
        self, lo: int, hi: int, scores: np.ndarray, targets: np.ndarray, tie_rank: np.ndarray, start: float
    ) -> None:
        """Rows ``lo:hi`` from their scores; ``start``: when scoring them began (for :attr:`seconds`)."""
        finite = np.where(np.isfinite(scores), scores, 0.0)
        self.fallback[lo:hi] = ~np.any(finite != 0.0, axis=1)
        self.ranks[lo:hi] = rank_of(scores, targets, tie_rank)
        self.candidates[lo:hi], _ = top_k(scores, self.candidates.shape[1], tie_rank)
        with self._lock:
            self.seconds += time.perf_counter() - start

    def result(self) -> RankedUsers:
        return RankedUsers(self.ranks, self.candidates, self.fallback, self.seconds)


def summarize(
    method: str,
    ranked: RankedUsers,
    n_eligible_items: int,
    ks: Sequence[int] = DEFAULT_KS,
    candidate_cutoffs: Sequence[int] = (20,),
) -> MethodResult:
    """Turn :class:`RankedUsers` into a :class:`MethodResult`."""
    shown = ranked.candidates[ranked.candidates >= 0]
    return MethodResult(
        method=method,
        users=len(ranked.ranks),
        metrics=summarize_ranks(ranked.ranks, ks),
        candidate_recall={f"@{k}": float(recall_at_k(ranked.ranks, k).mean()) for k in candidate_cutoffs},
        user_coverage=float(1.0 - ranked.fallback.mean()) if len(ranked.fallback) else float("nan"),
        item_coverage=float(len(np.unique(shown)) / max(1, n_eligible_items)),
        score_seconds=round(ranked.seconds, 3),
    )
