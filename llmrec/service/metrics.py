"""Prometheus metrics of one service instance (its own registry, so apps never collide)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ENDPOINTS = ("/recommend", "/recommend/batch", "/health", "/ready", "/metrics", "/docs", "/openapi.json")
"""Paths with their own label; any other path counts as ``other`` (bounded label values)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    """Request counts by endpoint and status, latencies, LLM fallbacks by reason, queue depth."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmrec_service_requests_total",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "llmrec_service_request_seconds",
            "HTTP request latency by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "llmrec_service_stage_seconds",
            "Time in each ranking stage (retrieve, llm) per recommendation.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "llmrec_service_llm_fallbacks_total",
            "Recommendations answered in the retriever's order, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "llmrec_service_queue_depth", "Requests waiting for the LLM batcher.", registry=self.registry
        )
        self.batch_size = Histogram(
            "llmrec_service_llm_batch_size",
            "Requests per LLM scoring call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )

    @staticmethod
    def endpoint(path: str) -> str:
        """The label of ``path``: itself when known, else ``other``."""
        return path if path in ENDPOINTS else "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = self.endpoint(path)
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
