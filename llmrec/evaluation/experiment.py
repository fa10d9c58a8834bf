"""``llmrec evaluate``: load -> clean -> split -> fit each generator -> rank -> report."""

from __future__ import annotations

import inspect
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from llmrec import __version__
from llmrec.candidates import make_generator
from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.data import CleaningConfig, clean, cross_domain_split, leave_one_out, load_dataset
from llmrec.data.schema import RecDataset
from llmrec.errors import ConfigError
from llmrec.evaluation.metrics import summarize_ranks
from llmrec.evaluation.retrieval import MethodResult, RankedUsers, rank_users, summarize

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("popularity", "bm25", "itemknn", "mf", "ease", "fused")


@dataclass
class EvalConfig:
    """Settings of one retrieval evaluation; every field is also a CLI flag."""

    dataset: str = "ml-latest-small"
    """Dataset folder, or the name of the embedded default."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    stage: Literal["valid", "test"] = "test"
    k_core: int = 5
    min_rating: float | None = None
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    candidate_k: int = 20
    source: str | None = None
    """Cross-domain: the source domain (histories of cold-start users come from it)."""
    target: str | None = None
    """Cross-domain: the target domain whose held-out items are ranked."""
    cold_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 256
    generator_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method constructor parameters, e.g. ``{"bm25": {"k1": 1.2}}``."""
    max_users: int | None = None
    """Evaluate a seeded sample of this many users (None = all); the report says so."""
    # --- LLM reranking stage (off unless ``rerank``) ---
    rerank: bool = False
    retriever: str = "fused"
    """Whose top-``candidate_k`` lists the LLM reranks."""
    model: str = "smollm2-135m-instruct"
    backend: str = "transformers"
    """'transformers', 'vllm' (in-process) or 'vllm-server' (see ``server_url``)."""
    server_url: str | None = None
    """Base URL of a running vLLM server for backend 'vllm-server' (default loopback:8000)."""
    adapter: str | None = None
    """PEFT adapter folder ('transformers', 'vllm') or a served LoRA module name ('vllm-server')."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    template: str = "listwise"
    shuffles: list[int] = field(default_factory=lambda: [0])
    """One reranker row per value: 0 = retriever order, N = mean over N shuffled orders."""
    max_prompt_tokens: int = 1024
    llm_batch_size: int = 8
    fusion_weights: list[float] = field(default_factory=list)
    """Score fusion LLM + retriever order (see ``llmrec.llm.reranker.fuse_with_retriever``): the
    weight is chosen among these, 0 (the LLM alone) and infinity (the retriever's order kept,
    so the choice is never worse than the retriever on validation) by NDCG@10 on the same users'
    validation items, reranked by the same model, then applied to ``stage``. Empty = off."""

    def __post_init__(self) -> None:
        if self.stage not in ("valid", "test"):
            raise ConfigError("must be 'valid' or 'test'", parameter="stage", value=self.stage)
        if (self.source is None) != (self.target is None):
            raise ConfigError(
                "give both source and target, or neither", parameter="source", value=self.source
            )
        if self.candidate_k < 1:
            raise ConfigError("must be >= 1", parameter="candidate_k", value=self.candidate_k)
        if not self.methods:
            raise ConfigError("name at least one method", parameter="methods", value=self.methods)
        if self.rerank and self.retriever not in self.methods:
            self.methods = [*self.methods, self.retriever]
        if any(w < 0 for w in self.fusion_weights):
            raise ConfigError("weights must be >= 0", parameter="fusion_weights", value=self.fusion_weights)
        if self.fusion_weights and self.stage != "test":
            raise ConfigError(
                "fusion weights are chosen on the validation stage, so evaluate stage 'test'",
                parameter="stage",
                value=self.stage,
            )
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError("must be >= 1 or None", parameter="max_users", value=self.max_users)


def build_generator(name: str, params: dict[str, Any], seed: int) -> CandidateGenerator:
    """Instantiate a registered generator, passing ``seed`` where it takes one."""
    from llmrec.candidates import GENERATORS

    params = dict(params)
    cls = GENERATORS.get(name)
    if cls is not None and "seed" in inspect.signature(cls.__init__).parameters:
        params.setdefault("seed", seed)
    return make_generator(name, **params)


def prepare(config: EvalConfig) -> RecDataset:
    """Load and clean the dataset of ``config``."""
    data = load_dataset(config.dataset)
    return clean(data, CleaningConfig(k_core=config.k_core, min_rating=config.min_rating))


def run_evaluation(config: EvalConfig, data: RecDataset | None = None) -> dict[str, Any]:
    """Run the retrieval evaluation and return the report (a JSON-ready dict)."""
    started = time.perf_counter()
    data = data if data is not None else prepare(config)
    if config.target is None:
        groups, protocol, log = _single_domain(data, config)
    else:
        groups, protocol, log = _cross_domain(data, config)
    if config.rerank:
        protocol["rerank"] = (
            f"{config.model} via {config.backend} ({config.template} template, one forward pass, "
            "label log-probs) reranks "
            f"the {config.retriever} top-{config.candidate_k} of users whose held-out item is in it; "
            "the other users keep the retriever's rank; metrics = mean over all users (LlamaRec)"
        )
    if config.max_users is not None:
        protocol["sample"] = f"a seeded sample of at most {config.max_users} evaluated users per group"
    return {
        "dataset": {"name": data.name, "source": data.source, **_brief_stats(data)},
        "protocol": protocol,
        "groups": groups,
        "config": asdict(config),
        "seed": config.seed,
        "log": data.log + log,
        "versions": {"llmrec": __version__, "python": platform.python_version()},
        "elapsed_seconds": round(time.perf_counter() - started, 2),
        "complete": True,
    }


def _brief_stats(data: RecDataset) -> dict[str, Any]:
    stats = data.stats()
    return {k: stats[k] for k in ("users", "items_interacted", "interactions", "order_by", "domains")}


def _fit_all(config: EvalConfig, train: TrainData) -> tuple[dict[str, CandidateGenerator], dict[str, Any]]:
    fitted: dict[str, CandidateGenerator] = {}
    info: dict[str, Any] = {}
    for name in config.methods:
        gen = build_generator(name, config.generator_params.get(name, {}), config.seed)
        start = time.perf_counter()
        try:
            gen.fit(train)
        except ConfigError as err:
            # e.g. EASE on a catalog too large for a dense inverse: say so in the report.
            logger.warning("skipping %s: %s", name, err)
            info[name] = {"skipped": str(err)}
            continue
        fitted[name] = gen
        info[name] = {"fit_seconds": round(time.perf_counter() - start, 3), "params": _public_params(gen)}
    return fitted, info


def _fit_retriever(config: EvalConfig, train: TrainData) -> CandidateGenerator:
    gen = build_generator(config.retriever, config.generator_params.get(config.retriever, {}), config.seed)
    gen.fit(train)
    return gen


def _public_params(gen: CandidateGenerator) -> dict[str, Any]:
    sig = inspect.signature(type(gen).__init__).parameters
    out = {}
    for name in sig:
        if name == "self" or not hasattr(gen, name):
            continue
        value = getattr(gen, name)
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def _evaluate_group(
    fitted: dict[str, CandidateGenerator],
    histories: list,
    targets: np.ndarray,
    allowed: np.ndarray | None,
    n_eligible: int,
    config: EvalConfig,
    group: str,
    reranker: Any = None,
    validation: ValidationView | None = None,
) -> dict[str, Any]:
    results: dict[str, MethodResult] = {}
    ranked_by: dict[str, RankedUsers] = {}
    for name, gen in fitted.items():
        ranked = rank_users(
            gen, histories, targets, allowed, config.candidate_k, config.batch_size, desc=f"{group}:{name}"
        )
        ranked_by[name] = ranked
        results[name] = summarize(name, ranked, n_eligible, config.ks, (config.candidate_k,))
    out: dict[str, Any] = {"users": len(targets), "methods": {n: r.to_dict() for n, r in results.items()}}
    if reranker is not None:
        out["rerank"] = _rerank_rows(
            reranker, ranked_by[config.retriever], histories, targets, config, fitted, validation
        )
    return out


@dataclass
class ValidationView:
    """The same users one stage earlier, for choosing the fusion weight: the retriever fit
    without the validation items, their validation histories and items."""

    retriever: CandidateGenerator
    histories: list
    targets: np.ndarray
    allowed: np.ndarray | None


def _rerank_rows(
    reranker, ranked: RankedUsers, histories, targets, config: EvalConfig, fitted, validation=None
) -> dict:
    from llmrec.evaluation.llm_stage import choose_weight, rerank_scores, summarize_rerank
    from llmrec.llm.reranker import RerankParams

    catalog = fitted[config.retriever].catalog
    rows = {}
    fusion: dict[str, Any] = {}
    v_ranked = None  # the validation users' candidate lists, shared by every shuffles row
    if validation is not None and config.fusion_weights:
        v_ranked = rank_users(
            validation.retriever,
            validation.histories,
            validation.targets,
            validation.allowed,
            config.candidate_k,
            config.batch_size,
            desc="valid:" + config.retriever,
        )
    for shuffles in config.shuffles:
        params = RerankParams(shuffles=shuffles, seed=config.seed)
        scored = rerank_scores(reranker, ranked, histories, catalog, params)
        label = f"{config.retriever} + {config.model}" + (
            f" (mean of {shuffles} shuffles)" if shuffles else ""
        )
        result = scored.ranks(ranked, targets)
        rows[label] = summarize_rerank(label, result, ranked.ranks, config.ks) | {"shuffles": shuffles}
        if v_ranked is None:
            continue
        v_scored = rerank_scores(reranker, v_ranked, validation.histories, catalog, params)
        weights = sorted({0.0, *config.fusion_weights, math.inf})
        weight, table = choose_weight(v_scored, v_ranked, validation.targets, weights)
        fused = scored.ranks(ranked, targets, weight)
        fused_label = f"{label}, fused with retriever order (w={weight:g}, chosen on validation)"
        weight = weight if math.isfinite(weight) else "inf"  # JSON has no infinity
        rows[fused_label] = summarize_rerank(fused_label, fused, ranked.ranks, config.ks) | {
            "shuffles": shuffles,
            "retriever_weight": weight,
        }
        fusion[label] = {
            "chosen_weight": weight,
            "validation_users": len(validation.targets),
            "validation_retrieved": int(len(v_scored.users)),
            "validation_ndcg@10": {f"{w:g}": round(v, 4) for w, v in table.items()},
            "validation_retriever_ndcg@10": round(summarize_ranks(v_ranked.ranks, [10])["ndcg@10"], 4),
        }
    out = {"retriever": config.retriever, "template": config.template, "rows": rows}
    if fusion:
        out["fusion"] = fusion
    return out


def build_reranker(config: EvalConfig) -> Any:
    """The LLM reranker of ``config`` (None when ``rerank`` is off)."""
    if not config.rerank:
        return None
    from llmrec.llm import load_reranker

    return load_reranker(
        config.model,
        backend=config.backend,
        server_url=config.server_url,
        template=config.template,
        adapter=config.adapter,
        quantization=config.quantization,
        batch_size=config.llm_batch_size,
        max_prompt_tokens=config.max_prompt_tokens,
    )


def _sample_users(users: np.ndarray, config: EvalConfig) -> np.ndarray:
    if config.max_users is None or config.max_users >= len(users):
        return users
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(users, size=config.max_users, replace=False))


def _single_domain(data: RecDataset, config: EvalConfig) -> tuple[dict, dict, list[str]]:
    split = leave_one_out(data)
    train = TrainData(split.catalog, split.sequences(config.stage))
    fitted, fit_info = _fit_all(config, train)
    all_users = split.eval_users(config.stage)
    users = _sample_users(all_users, config)
    targets = split.target(config.stage)[users]
    reranker = build_reranker(config)
    histories = split.histories(config.stage, users)
    validation = None
    if reranker is not None and config.fusion_weights:
        v_users = users[split.target("valid")[users] >= 0]
        validation = ValidationView(
            _fit_retriever(config, TrainData(split.catalog, split.sequences("valid"))),
            split.histories("valid", v_users),
            split.target("valid")[v_users],
            None,
        )
    group = _evaluate_group(
        fitted, histories, targets, None, len(split.catalog), config, "all", reranker, validation
    )
    groups = {"all": {**group, "fit": fit_info, "eligible_users": len(all_users)}}
    protocol = {
        "split": "leave-one-out by (timestamp, item id)"
        if data.order_by == "timestamp"
        else "leave-one-out by (step, item id)",
        "stage": config.stage,
        "history": "train + validation item" if config.stage == "test" else "train",
        "ranking": "against all items not in the user's history",
        "fit_on": "every user's history for this stage (no held-out item)",
        "k_core": config.k_core,
        "users": split.n_users,
        "items": len(split.catalog),
    }
    return groups, protocol, split.log


def _cross_domain(data: RecDataset, config: EvalConfig) -> tuple[dict, dict, list[str]]:
    assert config.source is not None and config.target is not None  # checked in EvalConfig
    cd = cross_domain_split(data, config.source, config.target, config.cold_fraction, config.seed)
    train = TrainData(cd.catalog, cd.fit_sequences(config.stage))
    fitted, fit_info = _fit_all(config, train)
    allowed = cd.catalog.domain_mask(config.target)
    n_eligible = int(allowed.sum())
    targets_all = cd.target_split.target(config.stage)
    groups: dict[str, Any] = {}
    reranker = build_reranker(config)
    v_retriever = None
    if reranker is not None and config.fusion_weights:
        v_retriever = _fit_retriever(config, TrainData(cd.catalog, cd.fit_sequences("valid")))
    for group in ("warm", "cold"):
        eligible = cd.users(group, config.stage)
        users = _sample_users(eligible, config)
        histories = cd.histories(group, config.stage, users)
        validation = None
        if v_retriever is not None:
            v_targets = cd.target_split.target("valid")
            v_users = users[v_targets[users] >= 0]
            validation = ValidationView(
                v_retriever, cd.histories(group, "valid", v_users), v_targets[v_users], allowed
            )
        groups[group] = _evaluate_group(
            fitted, histories, targets_all[users], allowed, n_eligible, config, group, reranker, validation
        )
        groups[group].update(fit=fit_info, eligible_users=len(eligible))
    protocol = {
        "split": f"leave-one-out per user within {config.target!r} by ({data.order_by}, item id)",
        "stage": config.stage,
        "source": config.source,
        "target": config.target,
        "warm": f"history = the user's {config.target} history (train + validation at test)",
        "cold": f"history = the user's {config.source} history only; their {config.target} "
        "interactions are hidden from every generator's fit",
        "cold_fraction": config.cold_fraction,
        "ranking": f"against all {config.target} items not in the user's history",
        "fit_on": f"all users' {config.source} history + warm users' {config.target} history",
        "k_core": config.k_core,
        "users": len(cd.user_ids),
        "target_items": n_eligible,
    }
    return groups, protocol, cd.log
