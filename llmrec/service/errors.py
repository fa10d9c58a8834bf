"""Error responses: one JSON shape, a message naming the field and value, no stack traces.

Bad input is a 4xx (:class:`InputError`, pydantic's 422), a missed deadline before any list
exists a 503 (:class:`Unavailable`), anything else a generic 500 whose traceback goes to the
server's log only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

logger = logging.getLogger("llmrec.service")

MAX_SHOWN = 80
"""Characters of a value repeated in a message (a request may send megabytes)."""


class InputError(Exception):
    """A request the service cannot answer: ``status`` (4xx), the field and value at fault."""

    def __init__(self, status: int, field: str, value: Any, message: str, error: str = "bad_request") -> None:
        self.status = status
        self.field = field
        self.value = value
        self.error = error
        self.message = f"{field}={shown(value)}: {message}"
        super().__init__(self.message)


class Unavailable(Exception):
    """The service cannot answer in time (503 with ``Retry-After``): not the request's fault."""


def shown(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def error_body(error: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON every error response carries."""
    return {"error": error, "message": message, "field": field, **extra}


def error_response(
    status: int, error: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(error, message, field), status_code=status, headers=headers)


def field_path(loc: Sequence[Any]) -> str:
    """``('body', 'history', 0, 'title')`` -> ``history[0].title`` (``body`` for the body itself)."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def error_field(err: dict[str, Any]) -> str:
    """The field a pydantic error is about (``body`` when the body is not JSON at all)."""
    return "body" if err.get("type") == "json_invalid" else field_path(err.get("loc", ()))


def validation_message(errors: Sequence[dict[str, Any]], limit: int = 3) -> tuple[str, str]:
    """(first field, message naming each field, its value and what is wrong) of pydantic errors."""
    parts = []
    for err in errors[:limit]:
        where = error_field(err)
        if err.get("type") == "json_invalid":
            parts.append(f"body: not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))})")
        elif err.get("type") == "missing":
            parts.append(f"{where}: required")
        else:
            parts.append(f"{where}={shown(err.get('input'))}: {err.get('msg')}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return (error_field(errors[0]) if errors else "body"), "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """4xx in the one shape; a generic 500 for the unexpected (traceback logged, not sent)."""

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.message, exc.field)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return error_response(503, "unavailable", str(exc), None, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        field, message = validation_message(errors)
        detail = [
            {"field": error_field(e), "message": e.get("msg"), "type": e.get("type")} for e in errors[:20]
        ]
        return JSONResponse(error_body("invalid_request", message, field, detail=detail), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            return error_response(
                404, "not_found", f"path={shown(request.url.path)}: no such endpoint", "path"
            )
        if status == 405:
            message = f"method={request.method!r}: not allowed on {shown(request.url.path)}"
            return error_response(405, "method_not_allowed", message, "method", exc.headers)
        if status == 400:  # FastAPI could not read the body (e.g. not UTF-8)
            return error_response(400, "bad_request", f"body: {exc.detail}", "body", exc.headers)
        return error_response(status, "http_error", str(exc.detail), None, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal error; the traceback is in the server's log")
