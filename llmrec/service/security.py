"""Who may call the service: the bind check, bearer-token auth and a per-client rate limit.

Both guards are plain ASGI middleware, so they cover every route (the docs and the OpenAPI
schema too) except the paths in ``open_paths`` (``/health``).
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from llmrec.errors import ConfigError
from llmrec.service.errors import error_response
from llmrec.service.settings import ServiceSettings


def check_bind(settings: ServiceSettings) -> None:
    """Refuse to listen beyond loopback without an API key (ConfigError naming the fix)."""
    if not settings.loopback and settings.api_key is None:
        raise ConfigError(
            "listening beyond loopback needs an API key: set $LLMREC_SERVICE_API_KEY (or service.api_key "
            "in the config file), or keep host 127.0.0.1",
            parameter="service.host",
            value=settings.host,
        )


def bearer_token(scope: Scope) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuth:
    """ASGI middleware: 401 unless the request carries the API key (constant-time compare)."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Collection[str] = ("/health",)) -> None:
        self.app = app
        self.key = api_key.encode("utf-8")
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not hmac.compare_digest(token, self.key):
            response = error_response(
                401,
                "unauthorized",
                "Authorization: a valid 'Bearer <api key>' header is required",
                "Authorization",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per client: ``rate`` tokens a second up to ``burst``; the least
    recently seen clients are forgotten beyond ``max_clients``."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, client: str) -> float:
        """0 when ``client`` may go ahead (a token is spent), else seconds until it may."""
        now = self.clock()
        bucket = self._buckets.pop(client, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[client] = bucket
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class RateLimit:
    """ASGI middleware: 429 with ``Retry-After`` when a client's bucket is empty."""

    def __init__(
        self, app: ASGIApp, buckets: TokenBuckets, open_paths: Collection[str] = ("/health",)
    ) -> None:
        self.app = app
        self.buckets = buckets
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.buckets.take(str(client))
        if wait > 0:
            response = error_response(
                429,
                "rate_limited",
                f"client={client!r}: rate limit of {self.buckets.rate:g} requests/s (burst "
                f"{self.buckets.burst}) exceeded; retry in {wait:.1f} s",
                "client",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
