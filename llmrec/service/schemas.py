"""Request and response bodies of the service (pydantic models: they are the OpenAPI schema)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

FallbackReason = Literal["llm_error", "llm_unavailable", "llm_timeout", "overloaded", "llm_disabled"]


def id_text(value: Any) -> Any:
    """An id given as a string or a whole number, as a string; anything else is refused (so the
    error names the field itself, not a member of a union)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError("must be a string or an integer")


IdText = Annotated[str | None, BeforeValidator(id_text)]


class HistoryEntry(BaseModel):
    """One history entry: a catalog ``item_id`` or a free-text ``title`` (a plain string in the
    ``history`` list is a title)."""

    model_config = ConfigDict(extra="forbid")

    item_id: IdText = Field(None, description="An item id of the catalog (string or integer).")
    title: StrictStr | None = Field(None, description="A title as typed (matched like --history).")

    @model_validator(mode="before")
    @classmethod
    def _plain_title(cls, value: Any) -> Any:
        return {"title": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> HistoryEntry:
        if (self.item_id is None) == (self.title is None):
            raise ValueError("give exactly one of item_id or title")
        return self


class RecommendRequest(BaseModel):
    """A known ``user`` id, or a ``history`` of item ids and/or titles (oldest first)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user": "1", "n": 5},
                {"history": ["Heat (1995)", {"item_id": "318"}, "Goodfellas"], "n": 5},
            ]
        },
    )

    user: IdText = Field(None, description="A known user id of the dataset (string or integer).")
    history: list[HistoryEntry] | None = Field(
        None,
        description="A new user's history, oldest first: {item_id} / {title} objects, or plain strings "
        "(titles; ';' separates several, as `llmrec recommend --history`).",
    )
    n: StrictInt | None = Field(None, description="Length of the ranked list (default: the config's n).")
    fusion_weight: float | None = Field(
        None,
        ge=0,
        description="Fuse the LLM's scores with the retriever's order (0 = LLM alone; default: the "
        "config's retriever_weight).",
    )
    domain: StrictStr | None = Field(
        None,
        description="Rank only this domain's items (a domain of the catalog; default: the config's target).",
    )
    adapter: StrictStr | None = Field(
        None,
        description="The LoRA adapter that scores this request: a name of the service's `adapters` "
        "('default' = the config's adapter; default: the configured reranker).",
    )

    @field_validator("fusion_weight")
    @classmethod
    def _not_nan(cls, value: float | None) -> float | None:
        if value is not None and math.isnan(value):
            raise ValueError("must be a number >= 0, not NaN")
        return value


class BatchRequest(BaseModel):
    """Several recommendation requests answered together: ``{"requests": [...]}`` or the bare
    list."""

    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest] = Field(..., min_length=1, description="At most max_batch_requests.")

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, value: Any) -> Any:
        return {"requests": value} if isinstance(value, list) else value


class RankedItem(BaseModel):
    """One recommended item."""

    rank: int
    item_id: str
    title: str
    score: float | None = Field(description="The final score (null if not finite).")
    retriever_rank: int = Field(description="1-based position in the retriever's list.")


class Timings(BaseModel):
    """Where the time of one request went, in milliseconds."""

    retrieve_ms: float
    llm_ms: float
    total_ms: float


class RecommendResponse(BaseModel):
    """A ranked list, and whether the LLM ordered it."""

    user: str | None
    items: list[RankedItem]
    reranked: bool = Field(description="True when the LLM's scores ordered the list.")
    reason: FallbackReason | None = Field(
        description="Why the retriever's order was returned (null when reranked)."
    )
    timings: Timings


class BatchResponse(BaseModel):
    """One response per request, in request order."""

    results: list[RecommendResponse]


class ErrorResponse(BaseModel):
    """Every error: a kind, a message naming the field and value, and the field."""

    error: str
    message: str
    field: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    ready: bool
    retriever: str
    llm: str
