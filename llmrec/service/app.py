"""The HTTP application: :func:`create_app` wires the ranking service, the guards and the routes;
:func:`create_app_from_parts` does it over the :class:`~llmrec.service.loading.ServiceParts` of a
config (as ``llmrec serve``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI
from starlette.responses import JSONResponse, Response

from llmrec.llm.reranker import RerankParams
from llmrec.pipeline import Recommender
from llmrec.service.errors import InputError, install_error_handlers
from llmrec.service.loading import ServiceParts
from llmrec.service.metrics import ServiceMetrics
from llmrec.service.middleware import BodySizeLimit, RequestMetrics
from llmrec.service.ranking import RankingService
from llmrec.service.readiness import readiness
from llmrec.service.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
    RecommendRequest,
    RecommendResponse,
)
from llmrec.service.security import BearerAuth, RateLimit, TokenBuckets
from llmrec.service.settings import ServiceSettings

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 429, 500, 503)}


def create_app(
    recommender: Recommender,
    settings: ServiceSettings | None = None,
    *,
    users: Mapping[str, np.ndarray] | None = None,
    params: RerankParams | None = None,
    allowed: np.ndarray | None = None,
    default_n: int = 10,
    adapters: Mapping[str, str | None] | None = None,
) -> FastAPI:
    """The service over ``recommender``.

    ``users`` maps known user ids to their item indices (oldest first); ``params`` and
    ``allowed`` are what ``llmrec recommend`` passes to ``Recommender.recommend`` (the config's
    shuffles, seed and mode; its target domain); ``default_n`` is the list length a request
    that gives no ``n`` gets. ``adapters`` maps the names a request may give as ``adapter``
    to the reranker's adapter (``LLMReranker.for_adapter``; None = the reranker as configured).
    """
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()
    service = RankingService(recommender, settings, metrics, users, params, allowed, default_n, adapters)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await service.close()

    app = FastAPI(
        title="llmrec",
        summary="LLM-reranked recommendations: retriever candidates, then the LLM's order.",
        version="0.2.0",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.service = service
    app.state.metrics = metrics
    app.state.settings = settings
    install_error_handlers(app)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(request: RecommendRequest) -> RecommendResponse:
        """A ranked list for a known user or a typed history."""
        started = time.perf_counter()
        return await service.recommend(request, service.check(request), started)

    @app.post("/recommend/batch", response_model=BatchResponse)
    async def recommend_batch(batch: BatchRequest) -> BatchResponse:
        """Ranked lists for several requests (their LLM scoring is batched together)."""
        started = time.perf_counter()
        limit = settings.max_batch_requests
        if len(batch.requests) > limit:
            raise InputError(
                400,
                "requests",
                f"{len(batch.requests)} requests",
                f"too many requests; at most {limit} (service.max_batch_requests)",
            )
        checked = [service.check(r, prefix=f"requests[{i}].") for i, r in enumerate(batch.requests)]
        results = await asyncio.gather(
            *(service.recommend(r, c, started) for r, c in zip(batch.requests, checked))
        )
        return BatchResponse(results=list(results))

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        """The process is up (no auth)."""
        return HealthResponse(status="ok")

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready() -> JSONResponse:
        """The retriever is loaded and the LLM answers; 503 otherwise."""
        ok, retriever, llm = await readiness(recommender, settings.ready_timeout_s)
        body = ReadyResponse(ready=ok, retriever=retriever, llm=llm)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        metrics.queue_depth.set(service.batcher.depth)
        return Response(metrics.render(), media_type=metrics.content_type)

    # Added last = outermost: metrics see every answer, then the rate limit, then auth.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(BearerAuth, api_key=settings.api_key)
    if settings.rate_limit_per_s > 0:
        app.add_middleware(
            RateLimit, buckets=TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
        )
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def create_app_from_parts(
    parts: ServiceParts,
    settings: ServiceSettings | None = None,
    *,
    recommender: Recommender | None = None,
    params: RerankParams | None = None,
    adapters: Mapping[str, str | None] | None = None,
) -> FastAPI:
    """:func:`create_app` over ``parts`` (:func:`~llmrec.service.loading.build_parts`): their
    recommender, known users, ranking options, target domain, list length and adapters.

    ``recommender``, ``params`` and ``adapters``, when given, replace the parts' own (e.g. the
    same retriever with another reranker).
    """
    return create_app(
        parts.recommender if recommender is None else recommender,
        settings,
        users=parts.users,
        params=parts.params if params is None else params,
        allowed=parts.allowed,
        default_n=parts.default_n,
        adapters=parts.adapters if adapters is None else adapters,
    )
