"""What the retriever knows about each candidate, as short evidence for the reranker's prompt.

A language model of a few hundred million parameters cannot learn from a few thousand
examples which items co-occur; the collaborative generators already know. Each candidate
gets its rank *within its own list* under every component of the retriever (EASE, item-kNN,
MF, BM25 for the fused retriever; the generator itself otherwise) and by training
popularity: small integers (1 = best) that mean the same on every dataset and list length,
so a reranker tuned on one domain reads them the same way on another.

Leakage: the evidence comes from the fitted retriever, so it is as clean as its training
data; fit it on data without the held-out items (``split.sequences(stage)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmrec.candidates.base import CandidateGenerator
from llmrec.data.catalog import History

SHORT_NAMES = {
    "bm25": "text",
    "itemknn": "knn",
    "mf": "mf",
    "ease": "ease",
    "ease-plain": "ease",
    "transition": "next",
    "embedding": "content",
}
"""How each component is named in a prompt (short, plain words)."""

Evidence = list[dict[str, int]]
"""One user's evidence: per candidate, ``{signal: rank within the list}`` (0 = no signal)."""


def components(generator: CandidateGenerator) -> list[CandidateGenerator]:
    """The generators whose scores become evidence: a fused retriever's active components,
    or the generator itself."""
    parts = getattr(generator, "generators", None)
    if parts is None:
        return [generator]
    active = getattr(generator, "active", None) or [True] * len(parts)
    return [g for g, on in zip(parts, active) if on]


def within_list_ranks(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """1-based rank of each entry of each row by value, descending, among the valid entries
    (ties keep list order); 0 for invalid entries and for rows whose valid values are all
    equal (no signal to show)."""
    values = np.where(valid, values, -np.inf)
    position = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    order = np.lexsort((position, -values), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, position + 1, axis=1)
    flat = ~(values.max(axis=1) > np.where(valid, values, np.inf).min(axis=1))
    ranks[flat] = 0
    return np.where(valid, ranks, 0)


def candidate_evidence(
    generator: CandidateGenerator, histories: Sequence[History], items: np.ndarray
) -> list[Evidence]:
    """Per history, per candidate of ``items`` (``n x k`` catalog indices, -1 = padding,
    dropped): its within-list rank under each component and by popularity.

    Names are :data:`SHORT_NAMES` (a component's own name otherwise) and ``pop``.
    """
    items = np.asarray(items, dtype=np.int64)
    if items.ndim != 2 or len(items) != len(histories):
        raise ValueError(f"items must be {len(histories)} x k, got shape {items.shape}")
    valid = items >= 0
    safe = np.maximum(items, 0)
    signals: dict[str, np.ndarray] = {}
    for comp in components(generator):
        scores = comp.masked_scores(histories, exclude_history=True, allowed=None)
        picked = np.take_along_axis(scores, safe, axis=1)
        picked = np.where(np.isfinite(picked), picked, np.float32(-1e30))
        name = SHORT_NAMES.get(comp.name, comp.name)
        while name in signals:
            name += "'"
        signals[name] = within_list_ranks(picked.astype(np.float64), valid)
    counts = generator.item_counts
    if counts is not None:
        signals["pop"] = within_list_ranks(np.asarray(counts, dtype=np.float64)[safe], valid)
    out: list[Evidence] = []
    for u in range(len(items)):
        cols = np.flatnonzero(valid[u])
        out.append([{name: int(ranks[u, j]) for name, ranks in signals.items()} for j in cols])
    return out
