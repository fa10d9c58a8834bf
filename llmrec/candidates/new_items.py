"""Slots for new items: content-based candidates among items without training interactions.

A collaborative retriever never reaches an item nobody has interacted with yet (a new
release): its score is zero under every co-occurrence model, so it never enters the top-k
the LLM reranks. This generator keeps the base retriever's list but reserves its last
``slots`` places for the items with at most ``max_count`` training interactions that a
content generator (item text: the embedding bridge or BM25) ranks highest for the user. The
reranker then sees both, and can move a new item up when its text fits the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.candidates.base import CompositeGenerator, TrainData
from llmrec.candidates.persistence import read_generator, write_generator
from llmrec.data.catalog import History, ItemCatalog
from llmrec.errors import ConfigError
from llmrec.ranking import top_k


class NewItemSlotsGenerator(CompositeGenerator):
    """The base retriever's top ``k - slots`` established items, then the content generator's
    top ``slots`` new items, then everything else in the base order; registered as
    ``new-slots``.

    An item is *new* when it has at most ``max_count`` training interactions. Rows where the
    content generator has no signal among the new items (e.g. an empty history) keep the base
    order, so the slots are only filled with items the user's history points to.

    The defaults were chosen on ml-latest-small's *validation* users under the new-item protocol
    (``new_items_fraction: 0.5``, 107 users whose held-out item is one of the 757 new items):
    ``fused-seq`` puts none of those items in its top 20. With the embedding bridge, 2 / 4 / 6 /
    8 slots reach 2.8% of them (3 users) each, at an all-user Recall@20 of 0.2066 / 0.1984 /
    0.1902 / 0.1721 against 0.2098 without slots (NDCG@10 unchanged: the slots sit below place
    10). On the test users they reach none of 122: item titles and genres say little about which
    new release a user picks next.

    Parameters
    ----------
    base, content:
        Registered generator names (fit here on the same data).
    slots:
        Places of the top-``k`` list reserved for new items (0 = the base retriever).
    k:
        The list length the reranker reads (the suite's ``num_candidates``): the new items
        take places ``k - slots + 1 .. k``.
    max_count:
        Items with at most this many training interactions are new.
    seed:
        Passed to the components that take one.
    """

    name = "new-slots"

    def __init__(
        self,
        base: str = "fused-seq",
        content: str = "embedding",
        slots: int = 2,
        k: int = 20,
        max_count: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from llmrec.candidates import make_generator  # the registry imports this module

        if not isinstance(k, int) or k < 1:
            raise ConfigError("must be an integer >= 1", parameter="k", value=k)
        if not isinstance(slots, int) or not 0 <= slots <= k:
            raise ConfigError(f"must be an integer in [0, k={k}]", parameter="slots", value=slots)
        if not isinstance(max_count, int) or max_count < 0:
            raise ConfigError("must be an integer >= 0", parameter="max_count", value=max_count)
        self.base, self.content = base, content
        self.slots, self.k, self.max_count, self.seed = slots, k, max_count, seed
        self.base_generator = make_generator(base, seed=seed)
        self.content_generator = make_generator(content, seed=seed)
        self.uses_text = self.base_generator.uses_text or self.content_generator.uses_text

    def _fit(self, train: TrainData) -> None:
        self.base_generator.fit(train)
        self.content_generator.fit(train)

    def new_items(self) -> np.ndarray:
        """Boolean mask of the items with at most ``max_count`` training interactions."""
        self._check_fitted()
        return np.asarray(self.item_counts) <= self.max_count

    @classmethod
    def _from_saved(cls, params: dict[str, Any], folder: Path, catalog: ItemCatalog) -> NewItemSlotsGenerator:
        gen = cls(**params)
        gen.base_generator = read_generator(folder / "base", catalog)
        gen.content_generator = read_generator(folder / "content", catalog)
        return gen

    def _save_state(self, folder: Path) -> None:
        write_generator(self.base_generator, folder / "base")
        write_generator(self.content_generator, folder / "content")

    def _compose(
        self, histories: Sequence[History], exclude_history: bool, allowed: np.ndarray | None
    ) -> np.ndarray:
        base = self.base_generator.masked_scores(histories, exclude_history, allowed)
        finite = np.isfinite(base)
        # The rest of the catalog keeps the base order, squeezed into [0, 1].
        lo = np.where(finite, base, np.inf).min(axis=1, keepdims=True)
        hi = np.where(finite, base, -np.inf).max(axis=1, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        out = np.where(finite, (base - np.where(np.isfinite(lo), lo, 0.0)) / span, -np.inf)
        out = out.astype(np.float32)
        if self.slots == 0 or not len(histories):
            return out
        new = self.new_items()
        content = self.content_generator.masked_scores(histories, exclude_history, allowed)
        content = np.where(new, content, -np.inf)
        fills = np.any(np.isfinite(content) & (content != 0.0), axis=1)
        # A row with no signal from either generator stays all zeros (the popularity fallback).
        active = fills | np.any(finite & (base != 0.0), axis=1)
        rows = np.arange(len(histories))[:, None]
        # Places 1 .. k - slots: the base order among established items (band (2, 3]).
        established, _ = top_k(
            np.where(new, -np.inf, base), self.k - self.slots, self.base_generator.tie_rank
        )
        ok = (established >= 0) & active[:, None]
        band = 2.0 + (self.k - np.arange(established.shape[1])) / self.k
        out[np.broadcast_to(rows, established.shape)[ok], established[ok]] = np.broadcast_to(
            band, established.shape
        )[ok]
        # The next places: the content generator's best new items (band (1, 2]), for users it
        # has a signal for among them.
        fresh, _ = top_k(content, self.slots, self.content_generator.tie_rank)
        ok = (fresh >= 0) & fills[:, None]
        band = 1.0 + (self.slots - np.arange(self.slots)) / self.slots
        out[np.broadcast_to(rows, fresh.shape)[ok], fresh[ok]] = np.broadcast_to(band, fresh.shape)[ok]
        return out
