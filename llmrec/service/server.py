"""Running the app under uvicorn: loopback unless a key is set, graceful shutdown."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from llmrec.service.security import check_bind
from llmrec.service.settings import ServiceSettings


def uvicorn_config(app: FastAPI, settings: ServiceSettings) -> uvicorn.Config:
    """uvicorn's settings: the bind address, and time for in-flight requests on SIGINT/SIGTERM."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        log_level=settings.log_level,
        server_header=False,
        proxy_headers=False,
    )


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve until SIGINT/SIGTERM (refuses a non-loopback address without an API key)."""
    check_bind(settings)
    uvicorn.Server(uvicorn_config(app, settings)).run()
