"""Validation ranking metric for model selection during tuning.

:class:`RankingEvaluator` fixes, once, a seeded set of validation users, their histories
(training items only) and the retriever's top-``num_candidates`` lists; each call reranks
those lists with an :class:`~llmrec.llm.reranker.LLMReranker` over the given backend
(the in-training model, or any loaded engine) and returns NDCG/Recall/MRR, LlamaRec's
protocol, through the one ranking path (:class:`~llmrec.pipeline.Recommender`).

By default the users are drawn among those whose validation item *is* retrieved: the
reranker cannot change anyone else's rank, so those users would only dilute the signal
(and cost nothing but a lower, constant-shifted number). ``retriever_*`` metrics on the
same users are returned beside the reranker's, the bar to beat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from llmrec.candidates.base import CandidateGenerator
from llmrec.data.split import LeaveOneOutSplit
from llmrec.errors import ConfigError
from llmrec.evaluation.llm_stage import rerank_scores
from llmrec.evaluation.metrics import summarize_ranks
from llmrec.evaluation.retrieval import rank_users
from llmrec.finetune.examples import domains_mask
from llmrec.llm.backend import ScoringBackend
from llmrec.llm.likelihood import LikelihoodParams, LikelihoodReranker
from llmrec.llm.prompting import PromptTemplate
from llmrec.llm.reranker import LLMReranker, RerankParams
from llmrec.pipeline import Recommender

logger = logging.getLogger(__name__)


class RankingEvaluator:
    """Callable ``evaluator(backend) -> {"ndcg@10": ..., ...}`` on fixed validation users.

    Parameters
    ----------
    split:
        The leave-one-out split; users are ranked at the ``"valid"`` stage (history = train).
    retriever:
        A generator fitted on ``split.sequences("valid")`` (never on validation items).
    template:
        Template name/path or a loaded :class:`PromptTemplate` (the one being tuned).
    users:
        How many validation users (seeded sample), or explicit user indices.
    num_candidates, max_prompt_tokens:
        As at test time: the retriever's top-``num_candidates`` are reranked.
    retrieved_only:
        Sample users among those whose validation item is in the candidate list (default).
    ks:
        Cut-offs of the returned NDCG@k / Recall@k.
    allowed:
        Boolean mask of rankable items; default: the domain(s) of the split's sequences (a
        one-domain split of a cross-domain dataset ranks within its domain).
    """

    def __init__(
        self,
        split: LeaveOneOutSplit,
        retriever: CandidateGenerator,
        template: str | PromptTemplate = "listwise",
        *,
        users: int | Sequence[int] = 64,
        num_candidates: int = 20,
        max_prompt_tokens: int = 1024,
        retrieved_only: bool = True,
        ks: Sequence[int] = (5, 10, 20),
        seed: int = 0,
        allowed: np.ndarray | None = None,
    ) -> None:
        self.template = PromptTemplate.load(template) if isinstance(template, str) else template
        self.max_prompt_tokens = max_prompt_tokens
        self.ks = tuple(ks)
        self.retriever = retriever
        self.num_candidates = num_candidates
        evaluable = split.eval_users("valid")
        histories = split.histories("valid", evaluable)
        if allowed is None:
            allowed = domains_mask(split.catalog, split.sequences("test"))
        ranked = rank_users(
            retriever, histories, split.valid[evaluable], allowed, num_candidates=num_candidates
        )
        if isinstance(users, int):
            if users < 1:
                raise ConfigError("must be >= 1", parameter="users", value=users)
            pool = (
                np.flatnonzero(ranked.ranks <= num_candidates)
                if retrieved_only
                else np.arange(len(evaluable))
            )
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(pool, size=min(users, len(pool)), replace=False))
        else:
            wanted = np.asarray(users, dtype=np.int64)
            position = {int(u): r for r, u in enumerate(evaluable)}
            missing = [int(u) for u in wanted if int(u) not in position]
            if missing:
                raise ConfigError("not validation users of the split", parameter="users", value=missing[:5])
            rows = np.array([position[int(u)] for u in wanted], dtype=np.int64)
        self.users = evaluable[rows]
        """Split user indices evaluated (ascending)."""
        self.histories = [histories[r] for r in rows]
        self.targets = split.valid[self.users]
        self.ranked = type(ranked)(
            ranks=ranked.ranks[rows],
            candidates=ranked.candidates[rows],
            fallback=ranked.fallback[rows],
            seconds=0.0,
        )
        self.retriever_metrics = {
            f"retriever_{k}": v for k, v in summarize_ranks(self.ranked.ranks, self.ks).items()
        }
        logger.info(
            "validation ranking: %d users (%d with the item retrieved in the top-%d)",
            len(self.users),
            int((self.ranked.ranks <= num_candidates).sum()),
            num_candidates,
        )

    def reranker(self, backend: ScoringBackend) -> LLMReranker:
        """What scores the lists over ``backend``: the listwise prompt being tuned."""
        return LLMReranker(backend, self.template, max_prompt_tokens=self.max_prompt_tokens)

    def __call__(self, backend: ScoringBackend) -> dict[str, float]:
        """Rerank the fixed users' candidate lists with ``backend``; metrics + timing."""
        start = time.perf_counter()
        recommender = Recommender(self.retriever, self.reranker(backend), self.num_candidates)
        scored = rerank_scores(recommender, self.ranked, self.histories, RerankParams(progress=False))
        metrics = summarize_ranks(scored.ranks(self.ranked, self.targets).ranks, self.ks)
        return {**metrics, **self.retriever_metrics, "seconds": round(time.perf_counter() - start, 2)}


class LikelihoodEvaluator(RankingEvaluator):
    """:class:`RankingEvaluator`'s users and lists, ranked by each candidate's likelihood under
    the model (:class:`~llmrec.llm.likelihood.CandidateLikelihood`, the history LM's scorer)
    instead of the listwise prompt. ``params``: the scorer's header and history length."""

    def __init__(self, *args, params: LikelihoodParams | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.params = params or LikelihoodParams()

    def reranker(self, backend: ScoringBackend) -> LikelihoodReranker:
        """Each candidate's PMI with the history under ``backend.model``."""
        return LikelihoodReranker(backend, self.params)
