"""``llmrec evaluate``: load -> clean -> split -> fit each generator -> rank -> report."""

from __future__ import annotations

import inspect
import logging
import math
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrec import __version__
from llmrec.candidates import make_generator
from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.data import cross_domain_split, leave_one_out
from llmrec.data.schema import RecDataset
from llmrec.errors import ConfigError
from llmrec.evaluation.config import EvalConfig
from llmrec.evaluation.metrics import summarize_ranks
from llmrec.evaluation.retrieval import MethodResult, RankedUsers, rank_users, summarize
from llmrec.evaluation.stats import uncertainty
from llmrec.pipeline import Recommender, build_reranker, build_retriever, prepare_data

logger = logging.getLogger(__name__)


def run_evaluation(config: EvalConfig, data: RecDataset | None = None) -> dict[str, Any]:
    """Run the retrieval evaluation and return the report (a JSON-ready dict)."""
    started = time.perf_counter()
    data = data if data is not None else prepare_data(config)
    if config.target is None:
        groups, protocol, log = _single_domain(data, config)
    else:
        groups, protocol, log = _cross_domain(data, config)
    if config.rerank:
        protocol["rerank"] = (
            f"{config.model} via {config.backend} ({config.template} template, one forward pass, "
            "label log-probs) reranks "
            f"the {config.retriever} top-{config.num_candidates} of users whose held-out item is in it; "
            "the other users keep the retriever's rank; metrics = mean over all users (LlamaRec)"
        )
    if config.max_users is not None:
        protocol["sample"] = f"a seeded sample of at most {config.max_users} evaluated users per group"
    ranks = {name: group.pop("per_user_ranks") for name, group in groups.items()}
    rows, comparisons = [], []
    if config.bootstrap:
        baselines = {
            method: config.retriever if method not in config.methods else _retrieval_baseline(method)
            for group in ranks.values()
            for method in group
        }
        rows, comparisons = uncertainty(
            ranks, baselines, config.ks, config.num_candidates, config.bootstrap, config.seed
        )
        protocol["uncertainty"] = (
            f"95% percentile bootstrap over users ({config.bootstrap} seeded resamples); comparisons are "
            "paired (same resamples) against the retriever for LLM rows, popularity for retriever rows"
        )
    return {
        "dataset": {"name": data.name, "source": data.source, **_brief_stats(data)},
        "protocol": protocol,
        "groups": groups,
        "rows": rows,
        "comparisons": comparisons,
        "per_user_ranks": {g: {m: r.tolist() for m, r in by.items()} for g, by in ranks.items()},
        "config": config.to_dict(),
        "seed": config.seed,
        "log": data.log + log,
        "versions": {"llmrec": __version__, "python": platform.python_version()},
        "elapsed_seconds": round(time.perf_counter() - started, 2),
        "complete": True,
    }


def _retrieval_baseline(method: str) -> str | None:
    return None if method == "popularity" else "popularity"


def _brief_stats(data: RecDataset) -> dict[str, Any]:
    stats = data.stats()
    return {k: stats[k] for k in ("users", "items_interacted", "interactions", "order_by", "domains")}


def _fit_all(config: EvalConfig, train: TrainData) -> tuple[dict[str, CandidateGenerator], dict[str, Any]]:
    fitted: dict[str, CandidateGenerator] = {}
    info: dict[str, Any] = {}
    for name in config.methods:
        gen = make_generator(name, seed=config.seed, **config.generator_params.get(name, {}))
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
            gen,
            histories,
            targets,
            allowed,
            config.num_candidates,
            config.retrieval_batch_size,
            desc=f"{group}:{name}",
        )
        ranked_by[name] = ranked
        results[name] = summarize(name, ranked, n_eligible, config.ks, (config.num_candidates,))
    out: dict[str, Any] = {"users": len(targets), "methods": {n: r.to_dict() for n, r in results.items()}}
    out["per_user_ranks"] = {n: r.ranks for n, r in ranked_by.items()}
    if reranker is not None:
        out["rerank"] = _rerank_rows(
            reranker,
            ranked_by[config.retriever],
            histories,
            targets,
            config,
            fitted,
            validation,
            out["per_user_ranks"],
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
    reranker, ranked: RankedUsers, histories, targets, config: EvalConfig, fitted, validation, per_user: dict
) -> dict:
    """The LLM rows of one group (their per-user ranks go into ``per_user``)."""
    from llmrec.evaluation.llm_stage import choose_weight, rerank_scores, summarize_rerank
    from llmrec.llm.reranker import RerankParams

    recommender = Recommender(fitted[config.retriever], reranker, config.num_candidates)
    rows = {}
    fusion: dict[str, Any] = {}
    v_ranked = None  # the validation users' candidate lists, shared by every shuffles row
    if validation is not None and config.fusion_weights:
        v_ranked = rank_users(
            validation.retriever,
            validation.histories,
            validation.targets,
            validation.allowed,
            config.num_candidates,
            config.retrieval_batch_size,
            desc="valid:" + config.retriever,
        )
    for shuffles in config.shuffles:
        params = RerankParams(shuffles=shuffles, seed=config.seed)
        scored = rerank_scores(recommender, ranked, histories, params)
        label = f"{config.retriever} + {config.model}" + (
            f" (mean of {shuffles} shuffles)" if shuffles else ""
        )
        result = scored.ranks(ranked, targets)
        rows[label] = summarize_rerank(label, result, ranked.ranks, config.ks) | {"shuffles": shuffles}
        per_user[label] = result.ranks
        if v_ranked is None:
            continue
        v_recommender = Recommender(validation.retriever, reranker, config.num_candidates)
        v_scored = rerank_scores(v_recommender, v_ranked, validation.histories, params)
        weights = sorted({0.0, *config.fusion_weights, math.inf})
        weight, table = choose_weight(v_scored, v_ranked, validation.targets, weights)
        fused = scored.ranks(ranked, targets, weight)
        fused_label = f"{label}, fused with retriever order (w={weight:g}, chosen on validation)"
        weight = weight if math.isfinite(weight) else "inf"  # JSON has no infinity
        per_user[fused_label] = fused.ranks
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


def _sample_users(users: np.ndarray, config: EvalConfig) -> np.ndarray:
    if config.max_users is None or config.max_users >= len(users):
        return users
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(users, size=config.max_users, replace=False))


def _single_domain(data: RecDataset, config: EvalConfig) -> tuple[dict, dict, list[str]]:
    split = leave_one_out(data, order=config.order)
    train = TrainData(split.catalog, split.sequences(config.stage))
    fitted, fit_info = _fit_all(config, train)
    all_users = split.eval_users(config.stage)
    users = _sample_users(all_users, config)
    targets = split.target(config.stage)[users]
    reranker = build_reranker(config) if config.rerank else None
    histories = split.histories(config.stage, users)
    validation = None
    if reranker is not None and config.fusion_weights:
        v_users = users[split.target("valid")[users] >= 0]
        validation = ValidationView(
            build_retriever(config, TrainData(split.catalog, split.sequences("valid"))),
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
    cd = cross_domain_split(
        data, config.source, config.target, config.cold_fraction, config.seed, order=config.order
    )
    train = TrainData(cd.catalog, cd.fit_sequences(config.stage))
    fitted, fit_info = _fit_all(config, train)
    allowed = cd.catalog.domain_mask(config.target)
    n_eligible = int(allowed.sum())
    targets_all = cd.target_split.target(config.stage)
    groups: dict[str, Any] = {}
    reranker = build_reranker(config) if config.rerank else None
    v_retriever = None
    if reranker is not None and config.fusion_weights:
        v_retriever = build_retriever(config, TrainData(cd.catalog, cd.fit_sequences("valid")))
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
