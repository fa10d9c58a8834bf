"""Typed settings, one dataclass per concern, composed per stage (after trl's config classes).

:class:`DataConfig`, :class:`RetrieverConfig` and :class:`ModelConfig` each own their fields
and defaults; ``EvalConfig``, ``FinetuneConfig`` and ``RecommendConfig`` inherit the groups
they need, so a setting has one name and one default everywhere, YAML files stay flat, and
the CLI options are generated from the fields (:mod:`llmrec.cli`). Values are type-checked
and coerced when a config is built (a YAML ``5e-4`` is a string; it becomes a float here).

Precedence (:func:`load_config`): dataclass default < YAML file < flags the user typed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from llmrec.errors import ConfigError, LlmrecWarning

DEFAULT_MODEL = "smollm2-135m-instruct"

RENAMED = {
    "candidate_k": "num_candidates",
    "n_candidates": "num_candidates",
    "llm_batch_size": "batch_size",
    "domain": "target",
    "cold_start_source": "source",
}
"""Old setting names still accepted (with a warning) -> their one name today."""


def setting(default: Any = None, help: str = "", yaml_only: bool = False, **kwargs: Any) -> Any:
    """A dataclass field with its help text (the CLI shows it, unless ``yaml_only``: a setting that
    only means something inside a config file's structure); list/dict defaults are copied."""
    meta = {"help": help, "yaml_only": yaml_only}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kwargs)
    return field(default=default, metadata=meta, **kwargs)


class Settings:
    """Base of every config: type coercion, then each group's ``_validate`` (MRO order)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, coerce(getattr(self, f.name), hints[f.name], f.name))
        for klass in reversed(type(self).__mro__):
            check = klass.__dict__.get("_validate")
            if check is not None:
                check(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON/YAML-ready)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")


def require_positive(config: Any, *names: str) -> None:
    """ConfigError naming the first of ``names`` whose value is set and below 1."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError("must be >= 1", parameter=name, value=value)


@dataclass(kw_only=True)
class DataConfig(Settings):
    """Which data, cleaned how, split how."""

    dataset: str = setting(
        "ml-latest-small",
        "Dataset folder (MovieLens, Amazon-2023 JSONL, RecBole, CSV/Parquet, `llmrec data --save`) "
        "or 'ml-latest-small' (embedded).",
    )
    format: str | None = setting(
        None,
        "Dataset format (default: detected): llmrec, movielens, ml-100k, ml-1m, amazon2023, recbole, tables.",
    )
    columns: dict[str, str] = setting(
        {},
        "Generic tables: which columns hold the fields, e.g. user=reviewerID,item=asin,time=unixReviewTime "
        "(fields: user, item, time, rating, domain, item_id, title, item_domain).",
    )
    k_core: int = setting(5, "Iterative k-core on users and items (0 = off).")
    min_rating: float | None = setting(None, "Keep interactions with rating >= this.")
    order: Literal["time+id", "time+text", "file"] = setting(
        "time+id",
        "Tie order of same-timestamp interactions: time+id (item ids compared as numbers when all "
        "are integers, as published splits), time+text (ids as text, llmrec < 0.2), file (file order).",
    )
    source: str | None = setting(None, "Cross-domain: the source domain (cold-start users' history).")
    target: str | None = setting(None, "Cross-domain: the target domain whose items are ranked.")
    cold_fraction: float = setting(0.2, "Cross-domain: share of users made cold-start.")
    only_domain: str | None = setting(
        None,
        "Keep only this domain's interactions and items (before cleaning): a single-domain run on "
        "one domain of a multi-domain dataset.",
    )
    seed: int = setting(0, "Seed of learned generators, user samples, shuffles and training.")

    def _validate(self) -> None:
        if self.k_core < 0:
            raise ConfigError("must be >= 0 (0 = off)", parameter="k_core", value=self.k_core)
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ConfigError("must be in [0, 1)", parameter="cold_fraction", value=self.cold_fraction)
        if self.source is not None and self.source == self.target:
            raise ConfigError(
                "source and target must be different domains", parameter="target", value=self.target
            )
        if self.only_domain is not None and self.source is not None:
            raise ConfigError(
                "keeps one domain, but source/target (cross-domain) need two: drop source/target, "
                "or only_domain",
                parameter="only_domain",
                value=self.only_domain,
            )
        if self.only_domain is not None and self.target not in (None, self.only_domain):
            raise ConfigError(
                f"the only domain kept is only_domain={self.only_domain!r}: drop target, or set it to that",
                parameter="target",
                value=self.target,
            )


@dataclass(kw_only=True)
class RetrieverConfig(Settings):
    """The candidate generator whose top list the LLM reranks."""

    retriever: str = setting(
        "fused",
        "Candidate generator: popularity, bm25, itemknn, mf, ease, ease-plain, embedding, transition, "
        "cross-ease, cross-userknn, fused, fused-seq, fused-cross.",
    )
    generator_params: dict[str, dict[str, Any]] = setting(
        {}, "Per-generator constructor parameters, e.g. {bm25: {k1: 1.2}} (YAML only)."
    )
    num_candidates: int = setting(20, "Candidates per user: the retriever's top-K the LLM reranks.")

    def _validate(self) -> None:
        require_positive(self, "num_candidates")


@dataclass(kw_only=True)
class ModelConfig(Settings):
    """The LLM reranker: model, adapter, engine, prompt."""

    model: str = setting(DEFAULT_MODEL, f"Hub id, local model folder, or {DEFAULT_MODEL!r} (offline).")
    adapter: str | None = setting(
        None,
        "PEFT adapter folder (a served LoRA name for vllm-server); its manifest supplies model, "
        "template and max_prompt_tokens unless they are set.",
    )
    backend: Literal["transformers", "vllm", "vllm-server"] = setting(
        "transformers", "LLM engine: transformers, vllm (in-process) or vllm-server (see serve-model)."
    )
    server_url: str | None = setting(None, "vllm-server: base URL (default http://127.0.0.1:8000/v1).")
    connect_timeout_s: float = setting(5.0, "vllm-server: seconds to wait for a connection.")
    read_timeout_s: float = setting(60.0, "vllm-server: seconds to wait for a reply.")
    retries: int = setting(2, "vllm-server: retries after a failed or timed-out request.")
    quantization: Literal["none", "4bit", "8bit"] = setting("none", "none, 4bit or 8bit (bitsandbytes).")
    template: str = setting("listwise", "Prompt template: a name in prompts/ or a .jinja path.")
    max_prompt_tokens: int = setting(1024, "Prompt budget in tokens (history is cut first).")
    device: str = setting("auto", "auto (GPU when available), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = setting(
        "auto", "auto: bf16 on GPU and CPUs with native bf16, else float32."
    )
    threads: int | None = setting(
        None, "transformers on CPU: torch threads while this engine computes (default: torch's)."
    )
    cpu_bind: str = setting(
        "all",
        "vllm on CPU: the cores the engine computes on: all (every core this process may use), auto "
        "(vLLM's choice: one core kept for its scheduler), nobind, or a list like 0-3.",
    )
    batch_size: int = setting(8, "Prompts per forward pass.")
    scorer: Literal["listwise", "likelihood"] = setting(
        "listwise",
        "listwise: the template's prompt shows the candidate list and the labels' log-probs rank it; "
        "likelihood: each candidate's PMI with the user's last titles under the model, no list "
        "shown (llmrec.llm.likelihood; transformers or vllm backend; a history-task adapter sets it).",
    )
    likelihood_header: str = setting(
        "Items a user liked, one per line:\n",
        "likelihood scorer: the line before the history titles (a history-task adapter sets it).",
    )

    def _validate(self) -> None:
        require_positive(self, "max_prompt_tokens", "batch_size", "threads")
        if self.scorer == "likelihood" and self.backend == "vllm-server":
            from llmrec.llm.likelihood import LIKELIHOOD_BACKENDS

            raise ConfigError(LIKELIHOOD_BACKENDS, parameter="backend", value=self.backend)
        from llmrec.llm.vllm_backend import cpu_bind_env

        cpu_bind_env(self.cpu_bind)  # a malformed value fails here, not when vLLM starts
        apply_adapter_manifest(self)


def apply_adapter_manifest(config: ModelConfig) -> None:
    """Take base model, template and prompt budget from the adapter's run manifest where the
    config leaves them at their defaults; a different base model is an error."""
    if not config.adapter or config.backend == "vllm-server":
        return
    path = Path(config.adapter).expanduser() / ".." / "manifest.json"
    if not path.is_file():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    base = manifest.get("base_model")
    if base and config.model not in (base, manifest.get("base_model_path")):
        if config.model != defaults["model"]:
            raise ConfigError(
                f"adapter {config.adapter} was tuned on base model {base!r} (see {path.resolve()}); "
                f"use --model {base} or an adapter tuned on {config.model!r}",
                parameter="model",
                value=config.model,
            )
        config.model = base
    settings = {"template": manifest.get("template"), **manifest.get("config", {})}
    for name in ("template", "max_prompt_tokens"):
        if getattr(config, name) == defaults[name] and settings.get(name) is not None:
            setattr(config, name, settings[name])
    if settings.get("task") == "history":  # a history LM is read by likelihood, with its header
        if config.scorer == defaults["scorer"]:
            config.scorer = "likelihood"
        if config.likelihood_header == defaults["likelihood_header"] and settings.get("history_header"):
            config.likelihood_header = settings["history_header"]


@dataclass(kw_only=True)
class RecommendConfig(ModelConfig, RetrieverConfig, DataConfig):
    """``llmrec recommend``: one user's ranked list."""

    retriever_dir: str | None = setting(
        None, "A saved fitted retriever folder (`llmrec candidates --save`): loaded, not refit."
    )
    n: int = setting(10, "Length of the ranked list.")
    shuffles: int = setting(0, "Average the LLM over N shuffled candidate orders (0 = retriever order).")
    retriever_weight: float = setting(0.0, "Fuse the LLM scores with the retriever order (0 = LLM alone).")
    mode: Literal["verbalizer", "generate"] = setting(
        "verbalizer", "verbalizer (one forward pass) or generate."
    )
    no_llm: bool = setting(False, "Skip the LLM: the retriever's list.")

    def _validate(self) -> None:
        require_positive(self, "n")
        if self.retriever_weight < 0:
            raise ConfigError("must be >= 0", parameter="retriever_weight", value=self.retriever_weight)


C = TypeVar("C", bound=Settings)


def coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` (str -> int/float/bool/list, int -> float), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0] if len(inner) == 1 else Any, name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"must be one of {', '.join(map(str, args))}", parameter=name, value=value)
        return value
    if origin is list:
        items = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError("must be a list (or comma-separated)", parameter=name, value=value)
        return [coerce(x, args[0] if args else Any, name) for x in items]
    if origin is dict or hint is dict:
        if isinstance(value, str):  # the CLI form: key=value,key=value
            pairs = [p.partition("=") for p in value.split(",") if p.strip()]
            if any(not k.strip() or not sep for k, sep, _ in pairs):
                raise ConfigError("must be key=value pairs, comma-separated", parameter=name, value=value)
            value = {k.strip(): v.strip() for k, _, v in pairs}
        if not isinstance(value, dict):
            raise ConfigError("must be a mapping", parameter=name, value=value)
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError("must be true or false", parameter=name, value=value)
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"must be a number ({hint.__name__})", parameter=name, value=value)
        try:
            number = hint(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"must be a number ({hint.__name__})", parameter=name, value=value) from None
        if hint is int and not isinstance(number, int):
            if not (isinstance(number, float) and number.is_integer()):
                raise ConfigError("must be a whole number", parameter=name, value=value)
            number = int(number)
        return float(number) if hint is float else number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError("must be a string", parameter=name, value=value)
    return value


def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """``cls(**values)`` with old names renamed and unknown keys refused, naming the valid ones."""
    values = dict(values)
    for old, new in RENAMED.items():
        if old in values and new in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            warnings.warn(f"{where}: setting {old!r} is now {new!r}", LlmrecWarning, stacklevel=2)
            values.setdefault(new, values.pop(old))
    valid = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(
            f"unknown setting(s); valid: {', '.join(sorted(valid))}", parameter=where, value=unknown
        )
    return cls(**values)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) settings file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", parameter="config", value=str(path))
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ConfigError("a config file must be a mapping of settings", parameter=str(path), value=values)
    return values


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults < the YAML file at ``path`` < ``overrides`` (the flags the user typed)."""
    values = read_yaml(path) if path is not None else {}
    values.update(overrides or {})
    return from_dict(cls, values, where=str(path) if path is not None else "config")


def load_recommend_config(
    path: str | Path | None, overrides: Mapping[str, Any] | None = None
) -> tuple[RecommendConfig, Any]:
    """As :func:`load_config` for :class:`RecommendConfig`, with the file's ``service:`` section
    (the settings of ``llmrec serve``) set apart: returned as it is (None when absent), so one
    config file drives both ``llmrec recommend`` and ``llmrec serve``."""
    values = read_yaml(path) if path is not None else {}
    section = values.pop("service", None)
    where = str(path) if path is not None else "config"
    return from_dict(RecommendConfig, {**values, **(overrides or {})}, where=where), section
