"""User slices (history length, new items) and beyond-accuracy metrics of the top lists.

A slice is a boolean mask over a group's evaluated users; its metrics and paired comparisons
are computed from the same per-user ranks as the whole group's. Beyond accuracy: catalog
coverage@K (share of eligible items in at least one top-K list) and popularity@K (mean number
of training interactions of the recommended items, per user, then averaged).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmrec.data.catalog import History
from llmrec.evaluation.config import EvalConfig


def history_bins(edges: Sequence[int]) -> list[tuple[str, int, float]]:
    """(name, low, high) length bins from increasing ``edges``: [5, 20] -> <=5, 6-20, >20."""
    bins: list[tuple[str, int, float]] = []
    low = 0
    for edge in edges:
        bins.append((f"history<={edge}" if low == 0 else f"history {low + 1}-{edge}", low, edge))
        low = edge
    bins.append((f"history>{low}", low, np.inf))
    return bins


def user_slices(
    config: EvalConfig, histories: Sequence[History], targets: np.ndarray, train_counts: np.ndarray
) -> dict[str, np.ndarray]:
    """Masks of the slices ``config.slices`` asks for (empty slices are left out)."""
    out: dict[str, np.ndarray] = {}
    if "history_length" in config.slices:
        lengths = np.asarray([len(h.items) for h in histories])
        for name, low, high in history_bins(config.history_bins):
            out[name] = (lengths > low) & (lengths <= high)
    if "new_items" in config.slices:
        n = config.new_item_max_train
        known = np.asarray(targets) >= 0
        counts = np.where(known, np.asarray(train_counts)[np.where(known, targets, 0)], 0)
        out[f"new items (<{n} train interactions)"] = known & (counts < n)
    return {name: mask for name, mask in out.items() if mask.any()}


def beyond_accuracy(
    top_lists: dict[str, np.ndarray], train_counts: np.ndarray, n_eligible: int, metrics: Sequence[str]
) -> list[dict]:
    """coverage@K and popularity@K of each method's top lists (K from ``metrics``, else 10)."""
    width = min((lists.shape[1] for lists in top_lists.values()), default=0)
    asked = [m for m in metrics if m.split("@")[0] in ("coverage", "popularity")]
    if not asked:
        asked = [f"coverage@{min(10, width)}", f"popularity@{min(10, width)}"] if width else []
    counts = np.asarray(train_counts, dtype=np.float64)
    out = []
    for method, lists in top_lists.items():
        for metric in asked:
            kind, k = metric.split("@")
            top = lists[:, : int(k)]
            shown = top >= 0
            if kind == "coverage":
                value = len(np.unique(top[shown])) / max(1, n_eligible)
            else:
                per_user = np.where(shown, counts[np.where(shown, top, 0)], 0.0).sum(1) / np.maximum(
                    shown.sum(1), 1
                )
                value = float(per_user[shown.any(1)].mean()) if shown.any() else float("nan")
            out.append({"method": method, "metric": metric, "value": float(value)})
    return out
