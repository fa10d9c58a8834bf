"""The service's ranking: :class:`~llmrec.pipeline.Recommender`'s path, with a micro-batched,
deadline-bounded LLM stage.

Per request: retrieve (``Recommender.retrieve``, always; among the request's ``domain`` items
or the config's target), then the LLM's scores
(``Recommender.llm_scores``, through :class:`~llmrec.service.batcher.MicroBatcher`), then
``Recommender.order`` — the same three steps as ``Recommender.rank``, so a request ranks as
``llmrec recommend`` does. When the LLM stage fails, times out or the queue is full, the
retriever's order is returned with the reason; a deadline passed before retrieval ends is a 503.
A request's ``adapter`` picks the LoRA adapter that scores it (``LLMReranker.for_adapter``); a
micro-batch is scored in one call per adapter.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from llmrec.candidates.base import Candidates
from llmrec.data.catalog import History
from llmrec.llm.reranker import RerankParams
from llmrec.pipeline import Recommender
from llmrec.service.batcher import MicroBatcher, Overloaded
from llmrec.service.errors import InputError, Unavailable
from llmrec.service.history import HistoryResolver
from llmrec.service.metrics import ServiceMetrics
from llmrec.service.schemas import RankedItem, RecommendRequest, RecommendResponse, Timings
from llmrec.service.settings import ServiceSettings

logger = logging.getLogger("llmrec.service")

Job = tuple[History, np.ndarray, str | None]
"""What the batcher scores: one history, its candidate row (catalog indices, -1 = padding) and
the adapter that scores it (None = the configured reranker)."""


@dataclass
class Checked:
    """A request's resolved inputs: history, list length, the items it may be given (None = all)
    and its adapter (None = the configured reranker)."""

    history: History
    n: int
    allowed: np.ndarray | None
    adapter: str | None


class RankingService:
    """Answers :class:`RecommendRequest` objects with the recommender's ranking."""

    def __init__(
        self,
        recommender: Recommender,
        settings: ServiceSettings,
        metrics: ServiceMetrics,
        users: Mapping[str, np.ndarray] | None = None,
        params: RerankParams | None = None,
        allowed: np.ndarray | None = None,
        default_n: int = 10,
        adapters: Mapping[str, str | None] | None = None,
    ) -> None:
        self.recommender = recommender
        self.settings = settings
        self.metrics = metrics
        self.params = params or RerankParams(progress=False)
        self.allowed = allowed
        self.max_n = settings.max_n or recommender.num_candidates
        self.default_n = min(default_n, self.max_n)
        self.resolver = HistoryResolver(recommender.catalog, users or {}, settings.max_history)
        self.domains = sorted({str(d) for d in recommender.catalog.domains})
        self._domain_masks: dict[str, np.ndarray] = {}
        self.recommenders: dict[str | None, Recommender] = {None: recommender}
        """The recommender per request ``adapter`` (None = the configured reranker)."""
        if recommender.reranker is not None:
            for name, target in (adapters or {}).items():
                self.recommenders[name] = (
                    recommender  # the configured reranker under a name (e.g. 'default')
                    if target is None
                    else Recommender(
                        recommender.generator,
                        recommender.reranker.for_adapter(target),
                        recommender.num_candidates,
                        recommender.retriever_weight,
                    )
                )
        self.batcher: MicroBatcher[Job, np.ndarray] = MicroBatcher(
            self.score_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            on_queue_depth=metrics.queue_depth.set,
            on_batch=metrics.batch_size.observe,
        )
        self._retrieval: ThreadPoolExecutor | None = None
        self._llm_down_until = 0.0
        """Until this time (``time.monotonic``) the LLM is not called: it failed just before."""

    def start(self) -> None:
        """Start the batcher and the retrieval thread (the app's lifespan; again after :meth:`close`)."""
        self.batcher.start()
        if self._retrieval is None:
            self._retrieval = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrec-retrieve")

    def score_batch(self, jobs: list[Job]) -> list[np.ndarray]:
        """The LLM's scores for a batch of requests (runs in the batcher's thread): one call per
        adapter (results in job order), unless prompts are shuffled — the reranker seeds each
        user's shuffles by its position in the call, so each request is scored alone (position
        0), as ``llmrec recommend``."""
        if self.params.shuffles > 0 and len(jobs) > 1:
            return [row for job in jobs for row in self.score_batch([job])]
        groups: dict[int, tuple[Recommender, list[int]]] = {}  # names of one adapter share a call
        for i, (_, _, adapter) in enumerate(jobs):
            recommender = self.recommenders[adapter]
            groups.setdefault(id(recommender), (recommender, []))[1].append(i)
        out: list[np.ndarray | None] = [None] * len(jobs)
        for recommender, positions in groups.values():
            histories = [jobs[i][0] for i in positions]
            items = np.stack([jobs[i][1] for i in positions])
            rows = recommender.llm_scores(histories, items, self.params)
            for i, row in zip(positions, rows, strict=True):
                out[i] = row
        return out  # type: ignore[return-value]  # every position is filled

    def check(self, request: RecommendRequest, prefix: str = "") -> Checked:
        """The request's history, list length, domain mask and adapter, or an :class:`InputError`."""
        history = self.resolver.resolve(request, prefix)
        n = self.default_n if request.n is None else request.n
        if not 1 <= n <= self.max_n:
            raise InputError(400, prefix + "n", request.n, f"must be between 1 and {self.max_n}")
        return Checked(history, n, self.domain_mask(request, prefix), self.adapter(request, prefix))

    def domain_mask(self, request: RecommendRequest, prefix: str = "") -> np.ndarray | None:
        """The items the request's ``domain`` allows (the config's target when it names none)."""
        if request.domain is None:
            return self.allowed
        if request.domain not in self.domains:
            raise InputError(
                400, prefix + "domain", request.domain, f"unknown domain; valid: {', '.join(self.domains)}"
            )
        if request.domain not in self._domain_masks:
            self._domain_masks[request.domain] = self.recommender.catalog.domain_mask(request.domain)
        return self._domain_masks[request.domain]

    def adapter(self, request: RecommendRequest, prefix: str = "") -> str | None:
        """The request's ``adapter``, one of the service's (None = the configured reranker)."""
        if request.adapter is None or request.adapter in self.recommenders:
            return request.adapter
        names = sorted(name for name in self.recommenders if name is not None)
        if self.recommender.reranker is None:
            valid = "none: no LLM reranker is configured (no_llm)"
        elif not names:
            valid = "none: the service has no adapters (service.adapters)"
        else:
            valid = ", ".join(names)
        raise InputError(400, prefix + "adapter", request.adapter, f"unknown adapter; valid: {valid}")

    async def recommend(
        self, request: RecommendRequest, checked: Checked, started: float | None = None
    ) -> RecommendResponse:
        """Retrieve, score (bounded by the deadline) and order one request's candidates."""
        started = time.perf_counter() if started is None else started
        history = checked.history
        if self._retrieval is None:
            self.start()
        loop = asyncio.get_running_loop()
        retrieval = loop.run_in_executor(
            self._retrieval, self.recommender.retrieve, [history], checked.allowed
        )
        try:  # the deadline bounds retrieval too (a waiting retrieval is cancelled)
            candidates: Candidates = await asyncio.wait_for(retrieval, self._remaining(started))
        except TimeoutError:
            raise Unavailable(
                f"retrieval did not finish within the request deadline of {self.settings.deadline_s:g} s "
                "(service.deadline_s); retry later"
            ) from None
        retrieved = time.perf_counter()
        scores, reason = await self._llm_scores(history, candidates, checked.adapter, started)
        done = time.perf_counter()
        if reason is not None and reason != "llm_disabled":
            self.metrics.fallbacks.labels(reason=reason).inc()
        ranking = self.recommender.order(candidates, scores, request.fusion_weight)
        ranked = ranking.lists(self.recommender.catalog, checked.n)[0]
        self.metrics.stage_latency.labels(stage="retrieve").observe(retrieved - started)
        self.metrics.stage_latency.labels(stage="llm").observe(done - retrieved)
        return RecommendResponse(
            user=None if request.user is None else str(request.user),
            items=[  # the rows `llmrec recommend --json` prints (a non-finite score as null)
                RankedItem(**{**row, "score": row["score"] if math.isfinite(row["score"]) else None})
                for row in ranked.to_dict()["items"]
            ],
            reranked=reason is None,
            reason=reason,
            timings=Timings(
                retrieve_ms=1000 * (retrieved - started),
                llm_ms=1000 * (done - retrieved),
                total_ms=1000 * (time.perf_counter() - started),
            ),
        )

    async def _llm_scores(
        self, history: History, candidates: Candidates, adapter: str | None, started: float
    ) -> tuple[Sequence[np.ndarray] | None, str | None]:
        """([scores], None), or (None, why the retriever's order stands)."""
        if self.recommender.reranker is None:
            return None, "llm_disabled"
        if not (candidates.items[0] >= 0).any():
            return None, None  # nothing to rerank: the (empty) list is as the LLM would leave it
        if time.monotonic() < self._llm_down_until:
            return None, "llm_unavailable"  # a failing backend is not waited on per request
        try:
            job = (history, candidates.items[0], adapter)
            row = await self.batcher.submit(job, timeout=self._remaining(started))
        except Overloaded:
            return None, "overloaded"
        except TimeoutError:
            return None, "llm_timeout"
        except Exception as err:  # noqa: BLE001 - any LLM failure falls back to the retriever
            logger.warning("LLM stage failed, answering in the retriever's order: %r", err)
            self._llm_down_until = time.monotonic() + self.settings.llm_cooldown_s
            return None, "llm_error"
        return [row], None

    def _remaining(self, started: float) -> float:
        """Seconds left of the request's deadline."""
        return self.settings.deadline_s - (time.perf_counter() - started)

    async def close(self) -> None:
        """Stop the batcher and the retrieval thread."""
        await self.batcher.stop()
        if self._retrieval is not None:
            self._retrieval.shutdown(wait=False, cancel_futures=True)
            self._retrieval = None
