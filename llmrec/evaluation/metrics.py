"""Ranking metrics for leave-one-out evaluation (one held-out item per user).

With a single relevant item, Recall@K equals HR@K, NDCG@K is
``1 / log2(rank + 1)`` when ``rank <= K``, and MRR is ``1 / rank`` over the
full ranking (no cut-off). Ranks are 1-based, computed against every eligible
item (see :func:`llmrec.ranking.rank_of`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DEFAULT_KS = (5, 10, 20)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k for one relevant item at 1-based ``ranks``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def recall_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user Recall@k (= hit rate) for one relevant item."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    """Per-user reciprocal rank."""
    return 1.0 / np.asarray(ranks, dtype=np.float64)


def summarize_ranks(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean NDCG@k, Recall@k for each k and MRR over users; empty input gives NaN."""
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    if len(ranks) == 0:
        nan = float("nan")
        return {**{f"{m}@{k}": nan for k in ks for m in ("ndcg", "recall")}, "mrr": nan}
    for k in ks:
        out[f"ndcg@{k}"] = float(ndcg_at_k(ranks, k).mean())
        out[f"recall@{k}"] = float(recall_at_k(ranks, k).mean())
    out["mrr"] = float(reciprocal_rank(ranks).mean())
    return out
