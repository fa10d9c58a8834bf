"""Shared set-up of the reranking benchmarks: real users and their retrieved candidate lists."""

from __future__ import annotations

import time

import numpy as np

from llmrec.candidates import TrainData, make_generator
from llmrec.data import clean, leave_one_out, load_dataset
from llmrec.pipeline import history_titles


def rerank_inputs(data: str, users: int, k: int, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    """History titles and fused top-``k`` candidate titles of a seeded sample of test users."""
    split = leave_one_out(clean(load_dataset(data)))
    retriever = make_generator("fused", seed=seed).fit(TrainData(split.catalog, split.sequences("test")))
    chosen = np.random.default_rng(seed).choice(split.n_users, size=users, replace=False)
    histories = split.histories("test", chosen)
    cands = retriever.candidates(histories, k=k)
    cand_titles = [[split.catalog.titles[i] for i in row if i >= 0] for row in cands.items]
    return [history_titles(h, split.catalog) for h in histories], cand_titles


def timed_rerank(reranker, hist: list[list[str]], cands: list[list[str]], params) -> tuple[dict, list]:
    """Score once under the clock: users/s, prompt tokens/s, and the scores."""
    prompts, _ = reranker.build_prompts(hist, cands, params)
    tokens = sum(reranker.renderer.n_tokens(p) for p in prompts)
    start = time.perf_counter()
    scores = reranker.score(hist, cands, params)
    seconds = time.perf_counter() - start
    row = {
        "users": len(hist),
        "seconds": round(seconds, 3),
        "users_per_second": round(len(hist) / seconds, 4),
        "prompt_tokens_per_second": round(tokens / seconds, 1),
        "mean_prompt_tokens": round(tokens / len(prompts), 1),
    }
    return row, scores
