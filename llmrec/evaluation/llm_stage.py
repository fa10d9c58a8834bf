"""Evaluation of the LLM reranking stage, LlamaRec's protocol.

The retriever's top-``K`` list is reranked for every evaluated user whose
held-out item is in it; users whose item was not retrieved keep the
retriever's rank (their list's order cannot change their metrics), and both
groups are combined weighted by user count, which is just the mean over all
users. The retrieved-subset metrics are reported too: there the reranker is
compared head to head with the retriever.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmrec.data.catalog import History, ItemCatalog
from llmrec.evaluation.metrics import summarize_ranks
from llmrec.evaluation.retrieval import RankedUsers
from llmrec.llm.reranker import LLMReranker, RerankParams, rerank_order
from llmrec.pipeline import history_titles


@dataclass
class RerankResult:
    """Final ranks of every user and the bookkeeping behind them."""

    ranks: np.ndarray
    retrieved: np.ndarray
    seconds: float
    prompts: int


def rerank_ranks(
    reranker: LLMReranker,
    ranked: RankedUsers,
    histories: Sequence[History],
    targets: np.ndarray,
    catalog: ItemCatalog,
    params: RerankParams,
) -> RerankResult:
    """Final 1-based ranks after reranking the retrieved users' candidate lists."""
    k = ranked.candidates.shape[1]
    retrieved = ranked.ranks <= k
    users = np.flatnonzero(retrieved)
    cand_rows = [[int(i) for i in ranked.candidates[u] if i >= 0] for u in users]
    titles = [[catalog.titles[i] for i in row] for row in cand_rows]
    hist = [history_titles(histories[u], catalog) for u in users]
    start = time.perf_counter()
    scores = reranker.score(hist, titles, params)
    seconds = time.perf_counter() - start
    final = ranked.ranks.copy()
    for u, row, s in zip(users, cand_rows, scores, strict=True):
        order = rerank_order(s)
        final[u] = int(np.flatnonzero(np.asarray(row)[order] == targets[u])[0]) + 1
    n_prompts = len(users) * (max(1, params.shuffles) if reranker.template.task == "listwise" else k)
    return RerankResult(ranks=final, retrieved=retrieved, seconds=seconds, prompts=n_prompts)


def summarize_rerank(name: str, result: RerankResult, retriever_ranks: np.ndarray, ks: Sequence[int]) -> dict:
    """Overall metrics (LlamaRec combination) plus retrieved-subset metrics of both stages."""
    sub = result.retrieved
    return {
        "method": name,
        "users": int(len(result.ranks)),
        "metrics": summarize_ranks(result.ranks, ks),
        "retrieved_users": int(sub.sum()),
        "subset_metrics": summarize_ranks(result.ranks[sub], ks),
        "subset_retriever_metrics": summarize_ranks(retriever_ranks[sub], ks),
        "rerank_seconds": round(result.seconds, 2),
        "prompts": result.prompts,
        "users_per_second": round(float(sub.sum()) / max(result.seconds, 1e-9), 3),
    }
