"""Client of a vLLM OpenAI-compatible server: a scoring backend over HTTP.

:class:`VLLMServerBackend` sends ``/v1/completions`` requests (prompts as token ids,
``max_tokens=1``, ``logprob_token_ids`` = the label ids, ``return_tokens_as_token_ids``) and
reads each label's full-vocabulary log-prob, so it scores exactly like the in-process
backend. Requests time out, are retried with backoff on connection errors and 5xx/429, and a
server that never answers gives an error that says how to start one
(:mod:`llmrec.llm.vllm_server`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrec.errors import ConfigError, LlmrecError
from llmrec.llm.models import resolve_model

logger = logging.getLogger(__name__)


class ServerUnavailable(LlmrecError):
    """No vLLM server answered at the configured address."""


@dataclass
class VLLMServerConfig:
    """Where the server is and how to talk to it."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "smollm2-135m-instruct"
    """The served model name (``--served-model-name``; ``llmrec serve-model`` uses the model
    argument) and, unless ``tokenizer`` is given, where the prompt tokenizer comes from."""
    tokenizer: str | None = None
    adapter: str | None = None
    """Name of a LoRA module of the server (``--lora-modules name=path``) to score with."""
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    batch_size: int = 64
    """Prompts per HTTP request (the server batches across requests too)."""
    api_key: str | None = None
    """Sent as a bearer token when set (``--api-key`` of the server); else $VLLM_API_KEY."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                "must start with http:// or https://", parameter="base_url", value=self.base_url
            )
        if self.retries < 0 or self.timeout_s <= 0 or self.batch_size < 1:
            raise ConfigError(
                "need retries >= 0, timeout_s > 0, batch_size >= 1",
                parameter="retries/timeout_s/batch_size",
                value=(self.retries, self.timeout_s, self.batch_size),
            )
        self.base_url = self.base_url.rstrip("/")


class VLLMServerBackend:
    """:class:`~llmrec.llm.backend.ScoringBackend` over a vLLM OpenAI-compatible server."""

    def __init__(self, config: VLLMServerConfig | None = None) -> None:
        from transformers import AutoTokenizer

        self.config = config = config or VLLMServerConfig()
        self.model_name = config.model
        self.adapter_name = config.adapter
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.tokenizer or config.model))

    def for_adapter(self, name: str | None) -> VLLMServerBackend:
        """The same server and tokenizer, scoring with LoRA module ``name`` (None = base model)."""
        view = copy.copy(self)  # shares the configuration and the tokenizer
        view.adapter_name = name
        return view

    def served_models(self) -> list[str]:
        """Names the server serves (base model and LoRA modules)."""
        return [m["id"] for m in self._request("GET", "/models")["data"]]

    def label_logprobs(self, prompts: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
        """Full-vocabulary log-probs of ``token_ids`` as the next token after each prompt."""
        from llmrec.llm.vllm_backend import read_label_logprobs

        ids = [int(t) for t in token_ids]
        out = np.zeros((len(prompts), len(ids)), dtype=np.float32)
        for lo in range(0, len(prompts), self.config.batch_size):
            chunk = prompts[lo : lo + self.config.batch_size]
            body = self._completions(
                chunk, max_tokens=1, logprobs=1, logprob_token_ids=ids, return_tokens_as_token_ids=True
            )
            for choice in body["choices"]:
                r = lo + int(choice["index"])
                top = (choice.get("logprobs") or {}).get("top_logprobs") or [None]
                if not top[0]:
                    raise LlmrecError(f"vLLM server returned no log-probs for prompt {r}")
                step = {int(k.split(":", 1)[1]): v for k, v in top[0].items() if k.startswith("token_id:")}
                out[r] = read_label_logprobs(step, ids, f"prompt {r}, server {self.config.base_url}")
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy continuations."""
        out = [""] * len(prompts)
        for lo in range(0, len(prompts), self.config.batch_size):
            body = self._completions(prompts[lo : lo + self.config.batch_size], max_tokens=max_new_tokens)
            for choice in body["choices"]:
                out[lo + int(choice["index"])] = choice["text"]
        return out

    def _completions(self, prompts: Sequence[str], **fields: Any) -> dict[str, Any]:
        payload = {
            "model": self.adapter_name or self.model_name,
            # token ids, tokenized as the transformers backend does (no added BOS)
            "prompt": [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts],
            "temperature": 0.0,
            **fields,
        }
        body = self._request("POST", "/completions", payload)
        if len(body.get("choices", [])) != len(prompts):
            raise LlmrecError(
                f"vLLM server {self.config.base_url} answered {len(body.get('choices', []))} choices "
                f"for {len(prompts)} prompts"
            )
        return body

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.config.base_url + path
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key or os.environ.get("VLLM_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None if payload is None else json.dumps(payload).encode()
        last: Exception | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:500]
                if err.code < 500 and err.code != 429:  # our request is wrong: retrying will not help
                    raise LlmrecError(
                        f"vLLM server {url} refused the request ({err.code}): {detail}"
                    ) from err
                last = err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = err
            logger.warning(
                "vLLM server %s: %s (try %d of %d)", url, last, attempt + 1, self.config.retries + 1
            )
        raise ServerUnavailable(
            f"no answer from the vLLM server at {self.config.base_url} after {self.config.retries + 1} tries "
            f"({last}). Start one with `llmrec serve-model --model {self.config.model}` or pass the "
            "right --server-url"
        )
