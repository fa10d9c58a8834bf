"""The service's settings: the ``service:`` section of the config file, then the environment.

Precedence: dataclass default < the YAML ``service:`` mapping < ``LLMREC_SERVICE_<FIELD>``
environment variables (``LLMREC_SERVICE_API_KEY``, ``LLMREC_SERVICE_HOST``,
``LLMREC_SERVICE_PORT``, ...) < the ``--host`` / ``--port`` flags. Values are type-checked when
the object is built (environment values are strings: ``"8080"`` becomes an int here).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from llmrec.config import Settings, from_dict, require_positive, setting
from llmrec.errors import ConfigError

ENV_PREFIX = "LLMREC_SERVICE_"


@dataclass(kw_only=True)
class ServiceSettings(Settings):
    """How ``llmrec serve`` listens, batches, bounds and protects its requests."""

    host: str = setting("127.0.0.1", "Address to listen on (loopback by default; others need api_key).")
    port: int = setting(8080, "TCP port.")
    api_key: str | None = setting(
        None,
        "Bearer token every endpoint but /health requires (set it through $LLMREC_SERVICE_API_KEY).",
        repr=False,
    )
    max_batch_size: int = setting(16, "Requests scored by the LLM in one call (1 = one by one).")
    max_wait_ms: float = setting(10.0, "How long the batcher waits for more requests after the first.")
    queue_size: int = setting(256, "Requests waiting for the LLM; beyond it: the retriever's order.")
    deadline_s: float = setting(30.0, "Per-request deadline; past it the LLM's answer is not awaited.")
    llm_cooldown_s: float = setting(
        5.0,
        "After an LLM failure, answer in the retriever's order without calling the LLM for this long "
        "(reason llm_unavailable), instead of waiting on a failing backend per request; 0 = off.",
    )
    adapters: dict[str, str] = setting(
        {},
        "More LoRA adapters a request may name (its `adapter` field): name -> PEFT adapter folder, "
        "loaded into the engine, for backend vllm; name -> the server's LoRA module name for "
        "vllm-server. 'default' is the config's own adapter.",
    )
    max_history: int = setting(200, "Most history entries a request may send.")
    max_n: int | None = setting(None, "Longest ranked list a request may ask for (default: num_candidates).")
    max_body_bytes: int = setting(65536, "Largest request body in bytes (413 beyond).")
    max_batch_requests: int = setting(32, "Most requests in one /recommend/batch call.")
    rate_limit_per_s: float = setting(20.0, "Requests per second per client (token bucket; 0 = off).")
    rate_limit_burst: int = setting(40, "Token bucket size: requests a client may send at once.")
    ready_timeout_s: float = setting(2.0, "How long /ready waits for the LLM to answer.")
    graceful_shutdown_s: float = setting(30.0, "On SIGINT/SIGTERM: how long in-flight requests may finish.")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = setting(
        "info", "uvicorn's log level."
    )

    def _validate(self) -> None:
        require_positive(
            self, "port", "max_batch_size", "queue_size", "max_history", "max_n", "max_body_bytes"
        )
        require_positive(self, "max_batch_requests", "rate_limit_burst")
        for name in ("deadline_s", "ready_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError("must be > 0 seconds", parameter=name, value=getattr(self, name))
        for name in ("max_wait_ms", "rate_limit_per_s", "graceful_shutdown_s", "llm_cooldown_s"):
            if getattr(self, name) < 0:
                raise ConfigError("must be >= 0", parameter=name, value=getattr(self, name))
        for name, target in self.adapters.items():
            if not isinstance(name, str) or not name.strip() or name == "default":
                raise ConfigError(
                    "adapter names must be non-empty strings other than 'default' (the config's adapter)",
                    parameter="adapters",
                    value=name,
                )
            if not isinstance(target, str) or not target.strip():
                raise ConfigError(
                    "must be a PEFT adapter folder (vllm) or a served LoRA name (vllm-server)",
                    parameter=f"adapters[{name}]",
                    value=target,
                )
        if self.port > 65535:
            raise ConfigError("must be a TCP port (1-65535)", parameter="port", value=self.port)
        if self.api_key is not None:  # the header's token is stripped, so the key is too
            self.api_key = self.api_key.strip() or None  # empty: no key, never "the empty key"

    @property
    def loopback(self) -> bool:
        """Whether :attr:`host` only accepts connections from this machine."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for any other
    address or host name (a name may resolve to anything)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings ``LLMREC_SERVICE_<FIELD>`` variables set (field names upper-cased)."""
    names = {f.name for f in dataclasses.fields(ServiceSettings)}
    out = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in names:
            out[key[len(ENV_PREFIX) :].lower()] = value
    return out


def service_settings(
    section: Any,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    where: str = "service",
) -> ServiceSettings:
    """Settings from a config file's ``service:`` mapping, the environment and ``overrides``
    (flags); a wrong value is a ConfigError naming the setting (and the variable it came from)."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError("must be a mapping of service settings", parameter=where, value=section)
    env = env_overrides(environ or {})
    values = {**section, **env, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return from_dict(ServiceSettings, values, where=where)
    except ConfigError as err:
        message = str(err)[len(f"{err.parameter}={err.value!r}: ") :]
        from_env = err.parameter in env and err.parameter not in (overrides or {})
        name = ENV_PREFIX + err.parameter.upper() if from_env else err.parameter
        if err.parameter == "api_key":  # never echo a secret
            raise ConfigError(message, parameter=name, value="<hidden>") from None
        if from_env:
            raise ConfigError(message, parameter=name, value=env[err.parameter]) from None
        raise
