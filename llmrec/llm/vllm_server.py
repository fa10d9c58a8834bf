"""vLLM behind its OpenAI-compatible server: a scoring client, and a local server launcher.

:class:`VLLMServerBackend` sends ``/v1/completions`` requests (prompts as token ids,
``max_tokens=1``, ``logprob_token_ids`` = the label ids, ``return_tokens_as_token_ids``) and
reads each label's full-vocabulary log-prob, so it scores exactly like the in-process
backend. Requests time out, are retried with backoff on connection errors and 5xx/429, and a
server that never answers gives an error that says how to start one.

:class:`VLLMServer` starts ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve``
is the same server; the CPU wheel's ``vllm`` script does not start) on loopback, waits until
``/health`` answers and stops it again; ``llmrec serve-model`` is its command line.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.errors import ConfigError, LlmrecError
from llmrec.llm.models import resolve_dtype, resolve_model

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


@dataclass
class VLLMServer:
    """A local vLLM OpenAI-compatible server process; a context manager.

    ``with VLLMServer(model="smollm2-135m-instruct", adapters={"office": "runs/x/adapter"}) as s:``
    then ``VLLMServerBackend(VLLMServerConfig(base_url=s.base_url, adapter="office"))``.
    """

    model: str = "smollm2-135m-instruct"
    adapters: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    """As the in-process backend: float32 on CPUs without native bf16."""
    max_model_len: int = 2048
    max_lora_rank: int = 16
    kv_cache_gib: float = 2.0
    startup_timeout_s: float = 900.0
    extra_args: list[str] = field(default_factory=list)
    log_file: str | None = None
    """Server output goes here (default: a temporary file named in errors)."""
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's argv."""
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            resolve_model(self.model),
            "--served-model-name",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            resolve_dtype(self.dtype, device),
            "--max-model-len",
            str(self.max_model_len),
            "--enable-prefix-caching",
        ]
        if self.adapters:
            argv += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--lora-modules"]
            for name, path in sorted(self.adapters.items()):
                if not (Path(path) / "adapter_config.json").exists():
                    raise ConfigError("has no adapter_config.json", parameter=f"adapter {name}", value=path)
                argv.append(f"{name}={os.path.abspath(path)}")
        return argv + list(self.extra_args)

    def start(self) -> VLLMServer:
        """Start the process and wait until it answers (or fail with its log's tail)."""
        from llmrec.llm.vllm_backend import import_vllm

        import_vllm()  # a clear install hint instead of a dead child process
        if _port_in_use(self.host, self.port):
            raise LlmrecError(f"port {self.port} on {self.host} is already in use: pass another --port")
        argv = self.command()
        if self.log_file is None:
            import tempfile

            self.log_file = tempfile.mkstemp(prefix="llmrec-vllm-", suffix=".log")[1]
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(self.kv_cache_gib))))
        logger.info("starting vLLM server: %s (log %s)", " ".join(argv), self.log_file)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise LlmrecError(
                    f"the vLLM server exited with code {self.process.returncode} while starting; "
                    f"its log ({self.log_file}) ends with:\n{_tail(self.log_file)}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        logger.info("vLLM server ready at %s", self.base_url)
                        return
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                pass
            time.sleep(2)
        self.stop()
        raise LlmrecError(
            f"the vLLM server did not answer within {self.startup_timeout_s:.0f} s; "
            f"log {self.log_file}:\n{_tail(self.log_file)}"
        )

    def stop(self) -> None:
        """Terminate the process (kill it after 30 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: str | None, lines: int = 30) -> str:
    if not path or not Path(path).exists():
        return "(no log)"
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
