"""Deterministic ranking of score rows: top-k and the rank of a target item.

Every ranking in llmrec uses one total order: higher score first, then the
item's ``tie_rank`` (its position in the training popularity order), so ties
(e.g. the many zero scores of BM25) fall back to popularity and results do not
depend on argsort internals.
"""

from __future__ import annotations

import numpy as np


def popularity_tie_rank(counts: np.ndarray) -> np.ndarray:
    """tie_rank[i] = position of item i when sorted by count desc, then index asc."""
    order = np.lexsort((np.arange(len(counts)), -np.asarray(counts, dtype=np.float64)))
    tie_rank = np.empty(len(counts), dtype=np.int64)
    tie_rank[order] = np.arange(len(counts))
    return tie_rank


def top_k(scores: np.ndarray, k: int, tie_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item indices and scores per row of ``scores`` (n x n_items).

    Items scored ``-inf`` (excluded) are never returned; rows with fewer than
    ``k`` eligible items are padded with index -1 and score -inf.
    """
    n, n_items = scores.shape
    k_eff = min(k, n_items)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_val = np.full((n, k), -np.inf, dtype=np.float32)
    if n == 0 or k_eff == 0:
        return out_idx, out_val
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    kth = scores[np.arange(n)[:, None], part].min(axis=1)
    for r in range(n):
        row = scores[r]
        thr = kth[r]
        above = np.flatnonzero(row > thr)
        ties = np.flatnonzero(row == thr) if np.isfinite(thr) else np.zeros(0, dtype=np.int64)
        cand = np.concatenate([above, ties])
        order = np.lexsort((tie_rank[cand], -row[cand]))[:k_eff]
        chosen = cand[order]
        out_idx[r, : len(chosen)] = chosen
        out_val[r, : len(chosen)] = row[chosen]
    return out_idx, out_val


def rank_of(scores: np.ndarray, targets: np.ndarray, tie_rank: np.ndarray) -> np.ndarray:
    """1-based rank of ``targets[r]`` in row ``r`` under the llmrec order."""
    rows = np.arange(len(targets))
    t_score = scores[rows, targets][:, None]
    t_tie = tie_rank[targets][:, None]
    ahead = (scores > t_score) | ((scores == t_score) & (tie_rank[None, :] < t_tie))
    return ahead.sum(axis=1) + 1
