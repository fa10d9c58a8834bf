"""Is the service ready: a fitted retriever and a reachable LLM."""

from __future__ import annotations

import asyncio
from typing import Any

from llmrec.pipeline import Recommender


def probe_llm(reranker: Any) -> str:
    """``ok`` when the LLM answers, ``disabled`` without one; raises when it is unreachable.

    An in-process engine is reachable once loaded; a server backend (``served_models``, the
    vLLM server client) is asked for its models.
    """
    if reranker is None:
        return "disabled"
    check = getattr(getattr(reranker, "backend", None), "served_models", None)
    if callable(check):
        check()
    return "ok"


async def readiness(recommender: Recommender, timeout_s: float) -> tuple[bool, str, str]:
    """(ready, retriever state, LLM state) within ``timeout_s`` seconds."""
    retriever = "ok" if getattr(recommender.generator, "catalog", None) is not None else "not fitted"
    try:
        async with asyncio.timeout(timeout_s):
            llm = await asyncio.to_thread(probe_llm, recommender.reranker)
    except TimeoutError:
        llm = f"unreachable: no answer within {timeout_s:g} s"
    except Exception as err:  # noqa: BLE001 - any failure to answer means not ready
        llm = f"unreachable: {type(err).__name__}"
    return retriever == "ok" and llm in ("ok", "disabled"), retriever, llm
