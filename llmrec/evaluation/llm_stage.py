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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.candidates.base import Candidates
from llmrec.config import ModelConfig
from llmrec.data.catalog import History
from llmrec.evaluation.metrics import ndcg_at_k, summarize_ranks
from llmrec.evaluation.retrieval import RankedUsers
from llmrec.evaluation.stats import bootstrap_indices, mean_ci, paired_difference
from llmrec.llm.reranker import RerankParams
from llmrec.pipeline import Recommender, order_candidates


@dataclass
class RerankResult:
    """Final ranks of every user and the bookkeeping behind them."""

    ranks: np.ndarray
    retrieved: np.ndarray
    seconds: float
    prompts: int
    retriever_weight: float = 0.0


@dataclass
class RerankScores:
    """The LLM's scores of the retrieved users' candidate lists (retriever order)."""

    users: np.ndarray
    candidates: Candidates
    scores: list[np.ndarray]
    seconds: float
    prompts: int

    def ranks(self, ranked: RankedUsers, targets: np.ndarray, retriever_weight: float = 0.0) -> RerankResult:
        """Final 1-based ranks of every user with this fusion weight (0 = the LLM alone)."""
        final = ranked.ranks.copy()
        ranking = order_candidates(self.candidates, self.scores, retriever_weight)
        final[self.users] = ranking.rank_of(targets[self.users])
        retrieved = np.zeros(len(final), dtype=bool)
        retrieved[self.users] = True
        return RerankResult(final, retrieved, self.seconds, self.prompts, retriever_weight)

    def top_lists(self, ranked: RankedUsers, retriever_weight: float = 0.0) -> np.ndarray:
        """Every user's candidate list as shown: reordered for the scored users, the retriever's
        order for the others."""
        lists = ranked.candidates.copy()
        if len(self.users):
            lists[self.users] = order_candidates(self.candidates, self.scores, retriever_weight).items
        return lists


def mean_log_softmax(members: Sequence[RerankScores]) -> RerankScores:
    """An ensemble of rerankers' scores of the same lists: each list's mean of the members'
    log-softmax scores (each member's scores made comparable as log-probabilities first)."""
    from scipy.special import log_softmax

    first = members[0]
    for m in members[1:]:
        if not np.array_equal(m.users, first.users) or not np.array_equal(
            m.candidates.items, first.candidates.items
        ):
            raise ValueError("an ensemble's members must score the same users' same candidate lists")
    scores = [np.mean([log_softmax(m.scores[i]) for m in members], axis=0) for i in range(len(first.users))]
    return replace(
        first,
        scores=scores,
        seconds=sum(m.seconds for m in members),
        prompts=sum(m.prompts for m in members),
    )


def mean_log_softmax_rows(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """An ensemble of score matrices of the same users and items (one row per user): the mean
    of each matrix's row-wise log-softmax (training seeds, epochs of one run)."""
    from scipy.special import log_softmax

    first = np.shape(matrices[0])
    if any(np.shape(m) != first for m in matrices):
        raise ValueError(
            f"an ensemble's score matrices must share one shape: {[np.shape(m) for m in matrices]}"
        )
    return np.mean([log_softmax(m, axis=1) for m in matrices], axis=0)


def rerank_scores(
    recommender: Recommender, ranked: RankedUsers, histories: Sequence[History], params: RerankParams
) -> RerankScores:
    """Score the candidate lists of the users whose held-out item the retriever found."""
    k = ranked.candidates.shape[1]
    users = np.flatnonzero(ranked.ranks <= k)
    items = ranked.candidates[users]
    cands = Candidates(items, np.zeros(items.shape, dtype=np.float32), ranked.fallback[users])
    start = time.perf_counter()
    scores = recommender.llm_scores([histories[u] for u in users], items, params)
    seconds = time.perf_counter() - start
    listwise = recommender.reranker.template.task == "listwise"  # type: ignore[union-attr]
    n_prompts = len(users) * (max(1, params.shuffles) if listwise else k)
    return RerankScores(users, cands, scores, seconds, n_prompts)


def reranker_fingerprint(config: ModelConfig) -> dict[str, Any]:
    """What decides an LLM's scores besides its input: model, adapter and template (by content
    where they are files), engine, dtype and device as resolved on this machine, prompt budget."""
    from llmrec.hashing import file_digest
    from llmrec.llm.models import pick_device, resolve_dtype
    from llmrec.llm.prompting import PromptTemplate

    template = PromptTemplate.load(config.template)
    device = pick_device(config.device) if config.backend == "transformers" else config.backend
    out: dict[str, Any] = {
        "model": config.model,
        "backend": config.backend,
        "server_url": config.server_url if config.backend == "vllm-server" else None,
        "device": device,
        "dtype": resolve_dtype(config.dtype, device if device != "vllm" else "cpu"),
        "quantization": config.quantization,
        "template": file_digest([template.path]) if template.path else template.body,
        "max_prompt_tokens": config.max_prompt_tokens,
    }
    for name in ("model", "adapter"):
        folder = Path(getattr(config, name) or "").expanduser()
        if getattr(config, name) and folder.is_dir():
            files = [p for p in folder.iterdir() if p.is_file()]
            small = [p for p in files if p.stat().st_size < 64 << 20]
            # Large weight files by name and size: hashing gigabytes per run would cost more
            # than it protects.
            out[f"{name}_files"] = [file_digest(small), sorted((p.name, p.stat().st_size) for p in files)]
    if config.scorer != "listwise":  # listed only when set, so listwise keys stay as they were
        from llmrec.llm.likelihood import LikelihoodParams

        p = LikelihoodParams(header=config.likelihood_header)
        out["scorer"] = [config.scorer, p.header, p.max_history, p.max_title_chars]
    return out


def choose_weight(
    scored: RerankScores, ranked: RankedUsers, targets: np.ndarray, weights: Sequence[float]
) -> tuple[float, dict[float, float]]:
    """The fusion weight with the best NDCG@10 on these (validation) users, ties to the
    smallest, and the NDCG@10 of every weight."""
    table = {
        float(w): summarize_ranks(scored.ranks(ranked, targets, w).ranks, [10])["ndcg@10"]
        for w in sorted(set(weights))
    }
    best = max(table.items(), key=lambda kv: (round(kv[1], 12), -kv[0]))[0]
    return best, table


def versus_retriever(
    ranks: np.ndarray, retriever_ranks: np.ndarray, retrieved: int, resamples: int, seed: int
) -> dict[str, Any]:
    """NDCG@10 of a reranking stage's ``ranks`` (every evaluated user) beside its retriever's,
    with 95% bootstrap CIs and the paired difference; ``retrieved``: how many users' held-out
    item the retriever listed (the only users whose rank the stage can move)."""
    nd, ref = ndcg_at_k(ranks, 10), ndcg_at_k(retriever_ranks, 10)
    idx = bootstrap_indices(len(nd), resamples, seed)
    return {
        "users": len(nd),
        "retrieved": int(retrieved),
        "ndcg@10": mean_ci(nd, idx),
        "retriever_ndcg@10": mean_ci(ref, idx),
        "diff_vs_retriever": paired_difference(nd, ref, idx),
    }


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
