"""Evaluation of the retrieval stage: every generator ranks all eligible items.

For each evaluated user the held-out item's rank is computed against all
items that are not in the user's history (and, cross-domain, that belong to
the target domain). The same top-``num_candidates`` lists are what the LLM
reranker would see, so their Recall@``num_candidates`` caps the reranker.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from llmrec.candidates.base import CandidateGenerator
from llmrec.data.catalog import History
from llmrec.evaluation.metrics import DEFAULT_KS, recall_at_k, summarize_ranks
from llmrec.ranking import rank_of, top_k


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
    num_candidates: int = 20,
    batch_size: int = 256,
    desc: str | None = None,
) -> RankedUsers:
    """Rank of each target among all eligible items, plus top-``num_candidates`` lists."""
    n = len(histories)
    ranks = np.zeros(n, dtype=np.int64)
    cands = np.full((n, num_candidates), -1, dtype=np.int64)
    fallback = np.zeros(n, dtype=bool)
    start = time.perf_counter()
    batches = range(0, n, batch_size)
    for lo in tqdm(batches, desc=desc or generator.name, leave=False, disable=n <= batch_size):
        hi = min(lo + batch_size, n)
        scores = generator.masked_scores(histories[lo:hi], exclude_history=True, allowed=allowed)
        finite = np.where(np.isfinite(scores), scores, 0.0)
        fallback[lo:hi] = ~np.any(finite != 0.0, axis=1)
        ranks[lo:hi] = rank_of(scores, targets[lo:hi], generator.tie_rank)
        cands[lo:hi], _ = top_k(scores, num_candidates, generator.tie_rank)
    return RankedUsers(ranks=ranks, candidates=cands, fallback=fallback, seconds=time.perf_counter() - start)


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
