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

    ``np.partition`` finds each row's ``k``-th best score; rows where exactly ``k`` items reach
    it are then sorted together (one vectorised sort of ``n x k``), the others (ties at the
    threshold, e.g. many zero scores, or fewer than ``k`` finite scores) one by one among every
    item tied at the threshold.
    """
    n, n_items = scores.shape
    k_eff = min(k, n_items)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_val = np.full((n, k), -np.inf, dtype=np.float32)
    if n == 0 or k_eff == 0:
        return out_idx, out_val
    kth = np.partition(scores, n_items - k_eff, axis=1)[:, n_items - k_eff]
    reach = scores >= kth[:, None]
    fast = np.isfinite(kth) & (reach.sum(axis=1) == k_eff)
    if fast.any():
        cand = np.nonzero(reach[fast])[1].reshape(-1, k_eff)
        # The order is total (tie_rank is a permutation), so any exact sort gives the same list:
        # tie_rank first, then a stable sort on the score.
        by_tie = np.take_along_axis(cand, np.argsort(tie_rank[cand], axis=1), axis=1)
        vals = np.take_along_axis(scores[fast], by_tie, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        out_idx[fast, :k_eff] = np.take_along_axis(by_tie, order, axis=1)
        out_val[fast, :k_eff] = np.take_along_axis(vals, order, axis=1)
    for r in np.flatnonzero(~fast):
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
