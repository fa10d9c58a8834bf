"""``llmrec serve``: an HTTP recommendation service over the one ranking path.

:func:`create_app` builds the FastAPI app over a :class:`~llmrec.pipeline.Recommender`;
:func:`load_service_config` and :func:`build_parts` make one from a config file as
``llmrec recommend`` does, :func:`create_app_from_parts` the app over those parts;
:func:`serve` runs it under uvicorn.
"""

from __future__ import annotations

from llmrec.service.app import create_app, create_app_from_parts
from llmrec.service.loading import ServiceParts, build_parts, load_service_config
from llmrec.service.security import check_bind
from llmrec.service.server import serve
from llmrec.service.settings import ServiceSettings

__all__ = [
    "ServiceParts",
    "ServiceSettings",
    "build_parts",
    "check_bind",
    "create_app",
    "create_app_from_parts",
    "load_service_config",
    "serve",
]
