"""Client of a vLLM OpenAI-compatible server: a scoring backend over HTTP.

:class:`VLLMServerBackend` sends ``/v1/completions`` requests (prompts as token ids,
``max_tokens=1``, ``logprob_token_ids`` = the label ids, ``return_tokens_as_token_ids``) and
reads each label's full-vocabulary log-prob, so it scores exactly like the in-process
backend. Connecting and waiting for the reply have separate time limits
(``connect_timeout_s``, ``read_timeout_s``); refused or timed-out connections, replies that are
not HTTP, and 5xx/429 answers are retried ``retries`` times with exponential backoff, and then
an error names the URL, what went wrong and how to start a server (:mod:`llmrec.llm.vllm_server`).

"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import os
import time
import urllib.parse
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
    connect_timeout_s: float = 5.0
    """Seconds to open the TCP (and TLS) connection."""
    read_timeout_s: float = 60.0
    """Seconds to wait for the server's reply to one request (for each read from the socket)."""
    retries: int = 2
    """Further tries after a failed one (refused, timed out, not HTTP, 5xx/429)."""
    backoff_s: float = 1.0
    """Wait before the first retry; doubled before each next one."""
    batch_size: int = 64
    """Prompts per HTTP request (the server batches across requests too)."""
    api_key: str | None = None
    """Sent as a bearer token when set (``--api-key`` of the server); else $VLLM_API_KEY."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                "must start with http:// or https://", parameter="base_url", value=self.base_url
            )
        for name in ("connect_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError("must be > 0 seconds", parameter=name, value=getattr(self, name))
        if self.retries < 0 or self.backoff_s < 0:
            raise ConfigError(
                "need retries >= 0 and backoff_s >= 0",
                parameter="retries/backoff_s",
                value=(self.retries, self.backoff_s),
            )
        if self.batch_size < 1:
            raise ConfigError("must be >= 1", parameter="batch_size", value=self.batch_size)
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
        """One JSON request, retried with backoff; :class:`ServerUnavailable` when every try fails."""
        url = self.config.base_url + path
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key or os.environ.get("VLLM_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None if payload is None else json.dumps(payload).encode()
        tries = self.config.retries + 1
        problem = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                status, body = self._send(method, url, data, headers)
            except _Failed as err:
                problem = str(err)
            else:
                if status < 300:
                    return _json(body, url)
                detail = body.decode(errors="replace")[:500]
                if status < 500 and status != 429:  # our request is wrong: retrying will not help
                    raise LlmrecError(f"vLLM server {url} refused the request ({status}): {detail}")
                problem = f"HTTP {status}: {detail}"
            logger.warning("vLLM server %s: %s (try %d of %d)", url, problem, attempt + 1, tries)
        raise ServerUnavailable(
            f"vLLM server {url}: {problem} (after {tries} {'try' if tries == 1 else 'tries'}). "
            f"Start one with `llmrec serve-model --model {self.config.model}`, pass the right "
            "--server-url, or raise VLLMServerConfig's connect_timeout_s / read_timeout_s / retries"
        )

    def _send(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        """Status and body of one HTTP exchange; :class:`_Failed` says which phase failed."""
        parts = urllib.parse.urlsplit(url)
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = connection_class(parts.hostname or "", parts.port, timeout=self.config.connect_timeout_s)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            try:
                conn.connect()
            except ConnectionRefusedError:
                raise _Failed("connection refused (is the server running on this port?)") from None
            except TimeoutError:
                raise _Failed(
                    f"connect timed out after connect_timeout_s={self.config.connect_timeout_s:g} s"
                ) from None
            except OSError as err:
                raise _Failed(f"cannot connect: {err}") from None
            assert conn.sock is not None
            conn.sock.settimeout(self.config.read_timeout_s)
            try:
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except TimeoutError:
                raise _Failed(
                    f"no reply within read_timeout_s={self.config.read_timeout_s:g} s "
                    "(the server accepted the connection but did not answer)"
                ) from None
            except (http.client.HTTPException, ConnectionError) as err:
                raise _Failed(f"not an HTTP reply or the connection was dropped ({err!r})") from None
            except OSError as err:
                raise _Failed(f"connection error: {err}") from None
        finally:
            conn.close()


class _Failed(Exception):
    """One try failed before an HTTP status came back; the message says how."""


def _json(body: bytes, url: str) -> dict[str, Any]:
    try:
        return json.loads(body)
    except ValueError:
        raise LlmrecError(
            f"vLLM server {url} answered something that is not JSON: {body[:200]!r}; is --server-url "
            "a vLLM OpenAI-compatible server (ending in /v1)?"
        ) from None
