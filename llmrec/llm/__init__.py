"""LLM stage: prompt templates, backends, the verbalizer reranker."""

from __future__ import annotations

from typing import Any


def load_reranker(
    model: str = "smollm2-135m-instruct",
    *,
    backend: str = "transformers",
    template: str = "listwise",
    adapter: str | None = None,
    quantization: str = "none",
    batch_size: int = 8,
    max_prompt_tokens: int = 1024,
    **backend_options: Any,
):
    """Load an engine once and wrap it in an :class:`~llmrec.llm.reranker.LLMReranker`."""
    from llmrec.errors import ConfigError
    from llmrec.llm.reranker import LLMReranker

    if backend != "transformers":
        raise ConfigError("supported backends: transformers", parameter="backend", value=backend)
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    engine = TransformersBackend(
        TransformersConfig(
            model=model, adapter=adapter, quantization=quantization, batch_size=batch_size, **backend_options
        )
    )
    return LLMReranker(engine, template, max_prompt_tokens=max_prompt_tokens)
