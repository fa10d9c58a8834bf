"""LLM stage: prompt templates, backends, the verbalizer reranker."""

from __future__ import annotations

from typing import Any

BACKENDS = ("transformers", "vllm", "vllm-server")
"""'transformers' (CPU/GPU, bitsandbytes), 'vllm' (in-process engine), 'vllm-server'
(a running OpenAI-compatible vLLM server, see ``llmrec serve-model``)."""


def load_backend(
    model: str = "smollm2-135m-instruct",
    *,
    backend: str = "transformers",
    adapter: str | None = None,
    quantization: str = "none",
    batch_size: int = 8,
    server_url: str | None = None,
    **backend_options: Any,
):
    """Load one scoring engine (see :data:`BACKENDS`).

    ``adapter`` is a PEFT adapter folder for 'transformers' and 'vllm', and the name of one of
    the server's LoRA modules for 'vllm-server'. ``quantization`` '4bit'/'8bit' is bitsandbytes:
    transformers everywhere, vLLM on GPU only.
    """
    from llmrec.errors import ConfigError

    if backend == "transformers":
        from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

        return TransformersBackend(
            TransformersConfig(
                model=model,
                adapter=adapter,
                quantization=quantization,
                batch_size=batch_size,
                **backend_options,
            )
        )
    if backend == "vllm":
        from llmrec.llm.vllm_backend import VLLMBackend, VLLMConfig

        options = dict(backend_options)
        if quantization != "none":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    "bitsandbytes quantization in vLLM needs a GPU (the CPU build has none): use "
                    "--quantization none, or --backend transformers",
                    parameter="quantization",
                    value=quantization,
                )
            options.setdefault("engine_args", {})["quantization"] = "bitsandbytes"
        return VLLMBackend(VLLMConfig(model=model, adapter=adapter, **options))
    if backend == "vllm-server":
        from llmrec.llm.vllm_client import VLLMServerBackend, VLLMServerConfig

        if quantization != "none":
            raise ConfigError(
                "the server's quantization is chosen when it starts",
                parameter="quantization",
                value=quantization,
            )
        url = {"base_url": server_url} if server_url else {}
        return VLLMServerBackend(VLLMServerConfig(model=model, adapter=adapter, **url, **backend_options))
    raise ConfigError(f"supported backends: {', '.join(BACKENDS)}", parameter="backend", value=backend)


def load_reranker(
    model: str = "smollm2-135m-instruct",
    *,
    backend: str = "transformers",
    template: str = "listwise",
    adapter: str | None = None,
    quantization: str = "none",
    batch_size: int = 8,
    max_prompt_tokens: int = 1024,
    server_url: str | None = None,
    scorer: str = "listwise",
    likelihood_header: str | None = None,
    **backend_options: Any,
):
    """Load an engine once and wrap it in an :class:`~llmrec.llm.reranker.LLMReranker`, or with
    ``scorer="likelihood"`` a :class:`~llmrec.llm.likelihood.LikelihoodReranker` (each
    candidate's PMI with the history, ``likelihood_header`` before it; transformers or in-process
    vllm).

    The template is read, and an adapter folder checked (by the backend's config), before the
    model loads, so a wrong name fails in a moment.
    """
    from llmrec.errors import ConfigError
    from llmrec.llm.likelihood import LIKELIHOOD_BACKENDS, LikelihoodParams, LikelihoodReranker
    from llmrec.llm.prompting import PromptTemplate
    from llmrec.llm.reranker import LLMReranker

    if scorer not in ("listwise", "likelihood"):
        raise ConfigError("listwise or likelihood", parameter="scorer", value=scorer)
    if scorer == "likelihood" and backend == "vllm-server":
        raise ConfigError(LIKELIHOOD_BACKENDS, parameter="backend", value=backend)
    prompt = PromptTemplate.load(template)
    if scorer == "likelihood" and backend == "vllm" and adapter is not None:
        from llmrec.llm.models import merged_model

        # vLLM returns prompt log-probs only without LoRA: serve the adapter merged into the base.
        model, adapter = str(merged_model(model, adapter)), None
    engine = load_backend(
        model,
        backend=backend,
        adapter=adapter,
        quantization=quantization,
        batch_size=batch_size,
        server_url=server_url,
        **backend_options,
    )
    if scorer == "likelihood":
        params = (
            LikelihoodParams() if likelihood_header is None else LikelihoodParams(header=likelihood_header)
        )
        return LikelihoodReranker(engine, params)
    return LLMReranker(engine, prompt, max_prompt_tokens=max_prompt_tokens)
