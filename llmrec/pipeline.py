"""Candidates -> prompt -> LLM rerank -> ranked list, for known or new users."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from llmrec.candidates.base import CandidateGenerator
from llmrec.data.catalog import History, ItemCatalog
from llmrec.llm.reranker import LLMReranker, RerankParams, rerank_order


@dataclass
class RankedList:
    """One user's recommendations, best first."""

    item_ids: list[str]
    titles: list[str]
    scores: list[float]
    """The reranker's scores (label log-probs), or the retriever's without a reranker."""
    retriever_ranks: list[int] = field(default_factory=list)
    """1-based position of each item in the retriever's list."""

    def to_dict(self) -> dict:
        return {
            "items": [
                {"rank": r + 1, "item_id": i, "title": t, "score": s, "retriever_rank": rr}
                for r, (i, t, s, rr) in enumerate(
                    zip(self.item_ids, self.titles, self.scores, self.retriever_ranks, strict=True)
                )
            ]
        }


def history_titles(history: History, catalog: ItemCatalog) -> list[str]:
    """Titles the prompt shows: known items (oldest first), then typed titles not in the catalog."""
    titles = [catalog.titles[int(i)] for i in history.items]
    titles += [t.strip() for t in history.text.split(";") if t.strip()]
    return titles


class Recommender:
    """A candidate generator followed by an optional LLM reranker."""

    def __init__(
        self,
        generator: CandidateGenerator,
        reranker: LLMReranker | None = None,
        num_candidates: int = 20,
    ) -> None:
        if generator.catalog is None:
            raise RuntimeError("fit the candidate generator before building a Recommender")
        self.generator = generator
        self.catalog: ItemCatalog = generator.catalog
        self.reranker = reranker
        self.num_candidates = num_candidates

    def recommend(
        self,
        histories: Sequence[History],
        n: int = 10,
        params: RerankParams | None = None,
        allowed: np.ndarray | None = None,
    ) -> list[RankedList]:
        """Top-``n`` items per history, reranked by the LLM when one is set."""
        cands = self.generator.candidates(histories, k=self.num_candidates, allowed=allowed)
        rows = [[int(i) for i in row if i >= 0] for row in cands.items]
        if self.reranker is None:
            orders = [np.arange(len(r)) for r in rows]
            scores = [cands.scores[u, : len(r)].astype(float) for u, r in enumerate(rows)]
        else:
            titles = [[self.catalog.titles[i] for i in r] for r in rows]
            hist_titles = [history_titles(h, self.catalog) for h in histories]
            scores = self.reranker.score(hist_titles, titles, params)
            orders = [rerank_order(s) for s in scores]
        out = []
        for r, order, s in zip(rows, orders, scores, strict=True):
            order = order[:n]
            out.append(
                RankedList(
                    item_ids=[str(self.catalog.item_ids[r[j]]) for j in order],
                    titles=[self.catalog.titles[r[j]] for j in order],
                    scores=[float(s[j]) for j in order],
                    retriever_ranks=[int(j) + 1 for j in order],
                )
            )
        return out
