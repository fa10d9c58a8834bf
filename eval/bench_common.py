"""Shared set-up of the reranking benchmarks: real users, their retrieved candidate lists, and
timed scoring through the one ranking path (:class:`llmrec.pipeline.Recommender`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from llmrec.candidates import Candidates, TrainData, make_generator
from llmrec.config import DataConfig
from llmrec.data import History, leave_one_out
from llmrec.pipeline import Recommender, prepare_data


@dataclass
class RerankInputs:
    """A seeded sample of test users: the fitted retriever, their histories and top-k lists."""

    retriever: object
    histories: list[History]
    candidates: Candidates

    def rows(self, lo: int, hi: int | None = None) -> RerankInputs:
        """The users ``lo:hi`` (e.g. warm-up users apart from timed ones)."""
        c = self.candidates
        part = Candidates(c.items[lo:hi], c.scores[lo:hi], c.fallback[lo:hi])
        return RerankInputs(self.retriever, self.histories[lo:hi], part)


def rerank_inputs(data: str, users: int, k: int, seed: int) -> RerankInputs:
    """The fused retriever's top-``k`` lists of ``users`` seeded test users of ``data``."""
    split = leave_one_out(prepare_data(DataConfig(dataset=data)))
    retriever = make_generator("fused", seed=seed).fit(TrainData(split.catalog, split.sequences("test")))
    chosen = np.random.default_rng(seed).choice(split.n_users, size=users, replace=False)
    histories = split.histories("test", chosen)
    return RerankInputs(retriever, histories, retriever.candidates(histories, k=k))


def timed_rerank(reranker, inputs: RerankInputs, params) -> tuple[dict, list]:
    """Score once under the clock: users/s, prompt tokens/s, and the scores."""
    rec = Recommender(inputs.retriever, reranker, num_candidates=inputs.candidates.items.shape[1])
    items = inputs.candidates.items
    tokens, n_prompts = None, 0
    if hasattr(reranker, "build_prompts"):  # listwise: prompts to count (likelihood has none)
        prompts, _ = reranker.build_prompts(
            *rec.texts(inputs.histories, items), params, rec.evidence(inputs.histories, items)
        )
        tokens, n_prompts = sum(reranker.renderer.n_tokens(p) for p in prompts), len(prompts)
    start = time.perf_counter()
    scores = rec.llm_scores(inputs.histories, inputs.candidates.items, params)
    seconds = time.perf_counter() - start
    n = len(inputs.histories)
    row = {
        "users": n,
        "seconds": round(seconds, 3),
        "users_per_second": round(n / seconds, 4),
        "prompt_tokens_per_second": None if tokens is None else round(tokens / seconds, 1),
        "mean_prompt_tokens": None if tokens is None else round(tokens / n_prompts, 1),
    }
    return row, scores
