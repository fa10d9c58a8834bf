"""``llmrec evaluate``: load -> clean -> split -> fit each generator -> rank -> rerank -> report.

Fitted generators, candidate lists and LLM scores go through an :class:`EvalCache` keyed by
their inputs, so a second run of the same configuration is served from disk and a changed
setting recomputes only what depends on it.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec import __version__
from llmrec.candidates import load_generator, make_generator
from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.candidates.fusion import FusedGenerator
from llmrec.data import cross_domain_split, leave_one_out
from llmrec.data.catalog import History
from llmrec.data.schema import RecDataset
from llmrec.data.split import items_first_seen_late, sampled_new_items
from llmrec.errors import ConfigError
from llmrec.evaluation.cache import EvalCache, blas_kernels, data_fingerprint, default_cache_dir
from llmrec.evaluation.config import EvalConfig
from llmrec.evaluation.metrics import summarize_ranks
from llmrec.evaluation.retrieval import MethodResult, RankedUsers, rank_methods, rank_users, summarize
from llmrec.evaluation.slices import beyond_accuracy, user_slices
from llmrec.evaluation.stats import uncertainty
from llmrec.hashing import digest

logger = logging.getLogger(__name__)

VOLATILE = ("elapsed_seconds", "timings", "cache")
"""Report keys that differ between identical runs (wall times, cache hits); everything else
is reproduced exactly by the same configuration and seed."""


def open_cache(config: EvalConfig) -> EvalCache:
    """The cache a run of ``config`` uses (disabled with ``cache: false``)."""
    return EvalCache(config.cache_dir or default_cache_dir()) if config.cache else EvalCache(None)


def run_evaluation(
    config: EvalConfig, data: RecDataset | None = None, cache: EvalCache | None = None
) -> dict[str, Any]:
    """Run the evaluation of ``config`` and return the report (a JSON-ready dict)."""
    started = time.perf_counter()
    cache = cache if cache is not None else open_cache(config)
    timings: dict[str, Any] = {}
    if data is None:
        from llmrec.pipeline import prepare_data

        data = prepare_data(config)
    run = EvalRun(config, cache, data_fingerprint(data), timings)
    timings["data_seconds"] = round(time.perf_counter() - started, 3)
    if config.target is None:
        groups, protocol, log = _single_domain(data, run)
    else:
        groups, protocol, log = _cross_domain(data, run)
    if config.rerank:
        protocol["rerank"] = (
            f"each reranker ({', '.join(n for n, _ in run.rerankers)}) reads the {config.retriever} "
            f"top-{config.num_candidates} of users whose held-out item is in it (one forward pass, "
            "label log-probs); the other users keep the retriever's rank; metrics = mean over all "
            "users (LlamaRec)"
        )
    if config.max_users is not None:
        protocol["sample"] = f"a seeded sample of at most {config.max_users} evaluated users per group"
    ranks: dict[str, dict[str, np.ndarray]] = {}
    slice_users: dict[str, list[int]] = {}  # slice -> positions of its users in their group
    for name, group in groups.items():
        by_method = group.pop("per_user_ranks")
        ranks[name] = by_method
        for slice_name, mask in group.pop("slice_masks").items():
            ranks[slice_name] = {m: r[mask] for m, r in by_method.items()}
            slice_users[slice_name] = np.flatnonzero(mask).tolist()
    rows, comparisons = [], []
    if config.bootstrap:
        baselines = {
            method: config.retriever if method not in config.methods else _retrieval_baseline(method)
            for by_method in ranks.values()
            for method in by_method
        }
        rows, comparisons = uncertainty(
            ranks, baselines, config.ks, config.num_candidates, config.bootstrap, config.seed
        )
        protocol["uncertainty"] = (
            f"95% percentile bootstrap over users ({config.bootstrap} seeded resamples); comparisons are "
            "paired (same resamples) against the retriever for LLM rows, popularity for retriever rows"
        )
    return {
        "dataset": {"name": data.name, "source": _shown_path(data.source), **_brief_stats(data)},
        "fingerprint": run.fingerprint,
        "protocol": protocol,
        "metrics": config.report_metrics(),
        "groups": groups,
        "rows": rows,
        "comparisons": comparisons,
        "beyond_accuracy": [
            {"slice": g, **entry} for g, body in groups.items() for entry in body.pop("beyond_accuracy")
        ],
        "per_user_ranks": {g: {m: r.tolist() for m, r in ranks[g].items()} for g in groups},
        "slice_users": slice_users,
        "config": config.to_dict(),
        "seed": config.seed,
        "log": [line.replace(data.source, _shown_path(data.source)) for line in data.log + log],
        "versions": _versions(),
        "elapsed_seconds": round(time.perf_counter() - started, 2),
        "timings": timings,
        "cache": {"folder": str(cache.root) if cache.root else None, **cache.stats},
        "complete": True,
    }


def _shown_path(path: str) -> str:
    """``path`` relative to the working folder when it lies below it (reports travel)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _versions() -> dict[str, str]:
    import scipy

    return {
        "llmrec": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def _retrieval_baseline(method: str) -> str | None:
    return None if method == "popularity" else "popularity"


def _brief_stats(data: RecDataset) -> dict[str, Any]:
    stats = data.stats()
    return {k: stats[k] for k in ("users", "items_interacted", "interactions", "order_by", "domains")}


@dataclass
class EvalRun:
    """What every step of one evaluation shares: config, cache, data fingerprint, timings."""

    config: EvalConfig
    cache: EvalCache
    fingerprint: str
    timings: dict[str, Any]
    rerankers: list[tuple[str, EvalConfig]] = field(init=False)
    _engines: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rerankers = self.config.reranker_configs()

    def engine(self, name: str, cfg: EvalConfig) -> Any:
        """The LLM reranker ``name``, loaded on first use (never when its scores are cached)."""
        if name not in self._engines:
            from llmrec.pipeline import build_reranker

            start = time.perf_counter()
            self._engines[name] = build_reranker(cfg)
            self.timings.setdefault("model_load_seconds", {})[name] = round(time.perf_counter() - start, 2)
        return self._engines[name]


class FittedGenerators:
    """The generators of one fit (a stage's training data), fitted or loaded from the cache on
    first use; :meth:`key` identifies a generator's fit without fitting it."""

    def __init__(self, run: EvalRun, train: TrainData, fit_key: str, label: str) -> None:
        self.run, self.train, self.fit_key, self.label = run, train, fit_key, label
        self._fitted: dict[str, CandidateGenerator | None] = {}
        self.info: dict[str, Any] = {}

    def _new(self, name: str) -> CandidateGenerator:
        params = self.run.config.generator_params.get(name, {})
        return make_generator(name, seed=self.run.config.seed, **params)

    def key(self, name: str) -> str:
        params = self._new(name).params()
        return digest("generator", self.fit_key, name, params, self.run.config.seed, blas_kernels())

    def get(self, name: str) -> CandidateGenerator | None:
        """The fitted generator, or None when it cannot fit this data (said in :attr:`info`)."""
        if name in self._fitted:
            return self._fitted[name]
        gen = self._new(name)
        if isinstance(gen, FusedGenerator):
            # Components already fitted for their own rows (same data, same parameters).
            gen.use_fitted(self._fitted)
        start = time.perf_counter()
        cache = self.run.cache
        hits = cache.stats.get("generators", {}).get("hits", 0)
        try:
            gen = cache.generator(
                self.key(name), lambda: gen.fit(self.train), lambda p: load_generator(p, name)
            )
        except ConfigError as err:
            # e.g. EASE on a catalog too large for a dense inverse: say so in the report.
            logger.warning("skipping %s: %s", name, err)
            self.info[name] = {"skipped": str(err)}
            self._fitted[name] = None
            return None
        cached = cache.stats.get("generators", {}).get("hits", 0) > hits
        self.run.timings.setdefault("generators", {})[f"{self.label}:{name}"] = {
            "seconds": round(time.perf_counter() - start, 3),
            "cached": cached,
        }
        self._fitted[name] = gen
        return gen

    def params(self, name: str) -> dict[str, Any]:
        return {k: v for k, v in self._new(name).params().items() if _scalar(v)}


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def histories_key(histories: list[History]) -> list[Any]:
    """The parts of a cache key that identify ``histories`` (items and free text, in order)."""
    return [[h.items for h in histories], [h.text for h in histories]]


def _ranked_key(
    run: EvalRun, generators: FittedGenerators, name: str, histories: list[History], targets, allowed
) -> str:
    k = run.config.num_candidates
    return digest("ranked", generators.key(name), *histories_key(histories), targets, allowed, k)


def ranked_users(
    run: EvalRun,
    generators: FittedGenerators,
    name: str,
    histories: list[History],
    targets: np.ndarray,
    allowed: np.ndarray | None,
    desc: str,
    computed: RankedUsers | None = None,
) -> RankedUsers | None:
    """:func:`rank_users` of generator ``name`` through the cache (None: it cannot fit);
    ``computed``: its result from a joint pass (:func:`rank_together`), stored as computed."""
    k = run.config.num_candidates
    key = _ranked_key(run, generators, name, histories, targets, allowed)

    def compute() -> dict[str, np.ndarray]:
        r = computed
        if r is None:
            gen = generators.get(name)
            if gen is None:
                raise _Skipped
            batch = run.config.retrieval_batch_size
            r = rank_users(gen, histories, targets, allowed, num_candidates=k, batch_size=batch, desc=desc)
        return {"ranks": r.ranks, "candidates": r.candidates, "fallback": r.fallback, "seconds": r.seconds}

    try:
        arrays = run.cache.arrays("candidates", key, compute)
    except _Skipped:
        return None
    return RankedUsers(arrays["ranks"], arrays["candidates"], arrays["fallback"], float(arrays["seconds"]))


@dataclass
class StageLists:
    """The suite retriever's candidate lists of one leave-one-out stage, for experiments that
    rescore them (:func:`stage_lists`)."""

    generators: FittedGenerators
    users: np.ndarray
    histories: list[History]
    targets: np.ndarray
    ranked: RankedUsers


def stage_lists(run: EvalRun, split: Any, stage: str, users: np.ndarray, window: int = 0) -> StageLists:
    """The retriever's lists of ``stage`` ("valid" or "test") for ``users`` (those with a
    validation item, on "valid"), under the cache keys of the suite's own run: after
    ``llmrec evaluate`` they load from the cache. ``window`` > 0: ``split`` is the suite's split
    shifted back that many steps (an earlier training window), keyed apart."""
    split_key = digest("loo", run.fingerprint, run.config.order)
    if window:
        split_key = digest(split_key, "window", window)
    train = TrainData(split.catalog, split.sequences(stage))
    gens = FittedGenerators(run, train, digest(split_key, stage), stage)
    users = users if stage == "test" else users[split.target("valid")[users] >= 0]
    hist = split.histories(stage, users)
    targets = split.target(stage)[users]
    ranked = ranked_users(run, gens, run.config.retriever, hist, targets, None, stage)
    if ranked is None:
        raise ConfigError(f"retriever {run.config.retriever!r} cannot fit the {stage} stage's data")
    return StageLists(gens, users, hist, targets, ranked)


class _Skipped(Exception):
    """A generator that cannot fit this data (nothing to cache)."""


def rank_together(
    run: EvalRun,
    generators: FittedGenerators,
    names: list[str],
    histories: list[History],
    targets: np.ndarray,
    allowed: np.ndarray | None,
    group: str,
) -> dict[str, RankedUsers]:
    """The methods ``names`` not in the cache, ranked in one pass (:func:`rank_methods`): a fused
    method reads its components' scores when they are methods too. Empty for fewer than two."""
    todo = [
        n
        for n in names
        if not run.cache.has_arrays(
            "candidates", _ranked_key(run, generators, n, histories, targets, allowed)
        )
    ]
    fitted = {n: g for n in todo if (g := generators.get(n)) is not None}
    if len(fitted) < 2:
        return {}
    config = run.config
    start = time.perf_counter()
    ranked = rank_methods(
        fitted,
        histories,
        targets,
        allowed,
        num_candidates=config.num_candidates,
        batch_size=config.retrieval_batch_size,
        desc=f"{group}: rank",
    )
    run.timings.setdefault("ranking_seconds", {})[group] = round(time.perf_counter() - start, 3)
    return ranked


def _evaluate_group(
    run: EvalRun,
    generators: FittedGenerators,
    histories: list,
    targets: np.ndarray,
    allowed: np.ndarray | None,
    n_eligible: int,
    group: str,
    validation: ValidationView | None = None,
) -> dict[str, Any]:
    config = run.config
    results: dict[str, MethodResult] = {}
    ranked_by: dict[str, RankedUsers] = {}
    joint = rank_together(run, generators, config.methods, histories, targets, allowed, group)
    for name in config.methods:
        ranked = ranked_users(
            run, generators, name, histories, targets, allowed, f"{group}:{name}", joint.get(name)
        )
        if ranked is None:
            continue
        ranked_by[name] = ranked
        results[name] = summarize(name, ranked, n_eligible, config.ks, (config.num_candidates,))
    out: dict[str, Any] = {"users": len(targets), "methods": {n: r.to_dict() for n, r in results.items()}}
    per_user = {n: r.ranks for n, r in ranked_by.items()}
    top_lists = {n: r.candidates for n, r in ranked_by.items()}
    if config.rerank and config.retriever in ranked_by:
        out["rerank"] = _rerank_rows(
            run, generators, ranked_by[config.retriever], histories, targets, validation, per_user, top_lists
        )
    out["per_user_ranks"] = per_user
    train_counts = generators.train.item_counts()
    out["slice_masks"] = {
        f"{group}:{name}" if group != "all" else name: mask
        for name, mask in user_slices(config, histories, targets, train_counts).items()
    }
    out["beyond_accuracy"] = beyond_accuracy(top_lists, train_counts, n_eligible, config.report_metrics())
    return out


@dataclass
class ValidationView:
    """The same users one stage earlier, for choosing the fusion weight: the generators fit
    without the validation items, their validation histories and items."""

    generators: FittedGenerators
    histories: list
    targets: np.ndarray
    allowed: np.ndarray | None


def _rerank_rows(
    run: EvalRun,
    generators: FittedGenerators,
    ranked: RankedUsers,
    histories,
    targets,
    validation: ValidationView | None,
    per_user: dict,
    top_lists: dict,
) -> dict:
    """The LLM rows of one group, every reranker (their per-user ranks go into ``per_user``,
    their top lists into ``top_lists``)."""
    from llmrec.evaluation.llm_stage import choose_weight, summarize_rerank
    from llmrec.llm.reranker import RerankParams

    config = run.config
    rows: dict[str, Any] = {}
    fusion: dict[str, Any] = {}
    v_ranked = None  # the validation users' candidate lists, shared by every reranker
    if validation is not None and any(cfg.fusion_weights for _, cfg in run.rerankers):
        v_ranked = ranked_users(
            run,
            validation.generators,
            config.retriever,
            validation.histories,
            validation.targets,
            validation.allowed,
            "valid:" + config.retriever,
        )
    for name, cfg in run.rerankers:
        for shuffles in cfg.shuffles:
            params = RerankParams(shuffles=shuffles, seed=config.seed)
            scored = reranker_scores(run, name, cfg, generators, ranked, histories, params)
            label = f"{config.retriever} + {name}" + (f" (mean of {shuffles} shuffles)" if shuffles else "")
            result = scored.ranks(ranked, targets)
            rows[label] = summarize_rerank(label, result, ranked.ranks, config.ks) | {
                "shuffles": shuffles,
                "reranker": name,
            }
            per_user[label] = result.ranks
            top_lists[label] = scored.top_lists(ranked)
            if v_ranked is None or not cfg.fusion_weights:
                continue
            assert validation is not None
            v_scored = reranker_scores(
                run, name, cfg, validation.generators, v_ranked, validation.histories, params
            )
            weights = sorted({0.0, *cfg.fusion_weights, math.inf})
            weight, table = choose_weight(v_scored, v_ranked, validation.targets, weights)
            fused = scored.ranks(ranked, targets, weight)
            fused_label = f"{label}, fused with retriever order (w={weight:g}, chosen on validation)"
            top_lists[fused_label] = scored.top_lists(ranked, weight)
            weight = weight if math.isfinite(weight) else "inf"  # JSON has no infinity
            per_user[fused_label] = fused.ranks
            rows[fused_label] = summarize_rerank(fused_label, fused, ranked.ranks, config.ks) | {
                "shuffles": shuffles,
                "reranker": name,
                "retriever_weight": weight,
            }
            fusion[label] = {
                "chosen_weight": weight,
                "validation_users": len(validation.targets),
                "validation_retrieved": int(len(v_scored.users)),
                "validation_ndcg@10": {f"{w:g}": round(v, 4) for w, v in table.items()},
                "validation_retriever_ndcg@10": round(summarize_ranks(v_ranked.ranks, [10])["ndcg@10"], 4),
            }
    out: dict[str, Any] = {
        "retriever": config.retriever,
        "template": ", ".join(sorted({cfg.template for _, cfg in run.rerankers if not cfg.ensemble})),
        "rerankers": {
            name: (
                {"ensemble": cfg.ensemble}
                if cfg.ensemble
                else {
                    "model": cfg.model,
                    "adapter": cfg.adapter,
                    "template": cfg.template,
                    "backend": cfg.backend,
                }
            )
            for name, cfg in run.rerankers
        },
        "rows": rows,
    }
    if fusion:
        out["fusion"] = fusion
    return out


def reranker_scores(
    run: EvalRun,
    name: str,
    cfg: EvalConfig,
    generators: FittedGenerators,
    ranked: RankedUsers,
    histories: list[History],
    params: Any,
):
    """The scores of reranker ``name``: its model's (:func:`cached_llm_scores`), or for an
    ``ensemble`` entry the mean of its members' log-softmax scores of each list."""
    if not cfg.ensemble:
        return cached_llm_scores(run, name, cfg, generators, ranked, histories, params)
    from llmrec.evaluation.llm_stage import mean_log_softmax

    configs = dict(run.rerankers)
    return mean_log_softmax(
        [cached_llm_scores(run, m, configs[m], generators, ranked, histories, params) for m in cfg.ensemble]
    )


def cached_llm_scores(
    run: EvalRun,
    name: str,
    cfg: EvalConfig,
    generators: FittedGenerators,
    ranked: RankedUsers,
    histories: list[History],
    params: Any,
):
    """The LLM's scores of the retrieved users' lists, scored in chunks through the cache (an
    interrupted run resumes at the first chunk not stored)."""
    from tqdm.auto import tqdm

    from llmrec.evaluation.llm_stage import RerankScores, reranker_fingerprint
    from llmrec.llm.prompting import PromptTemplate
    from llmrec.pipeline import Recommender

    k = ranked.candidates.shape[1]
    users = np.flatnonzero(ranked.ranks <= k)
    items = ranked.candidates[users]
    hist = [histories[u] for u in users]
    key_parts = [reranker_fingerprint(cfg), params.shuffles, params.seed, items, *histories_key(hist)]
    if PromptTemplate.load(cfg.template).evidence:  # the prompt shows the retriever's scores
        key_parts.append(generators.key(run.config.retriever))
    key = digest("llm-scores", *key_parts)

    def compute(lo: int, hi: int) -> np.ndarray:
        retriever = generators.get(run.config.retriever)  # titles, and evidence if shown
        assert retriever is not None
        recommender = Recommender(retriever, run.engine(name, cfg), k)
        scores = recommender.llm_scores(hist[lo:hi], items[lo:hi], params)
        out = np.full((hi - lo, k), np.nan)
        for i, s in enumerate(scores):
            out[i, : len(s)] = s
        return out

    with tqdm(total=len(users), desc=f"LLM {name}", leave=False, disable=len(users) == 0) as bar:
        matrix, seconds = run.cache.chunked_rows(
            "llm-scores", key, len(users), 4 * cfg.batch_size, compute, bar.update
        )
    counts = (items >= 0).sum(axis=1)
    scores = [matrix[i, : counts[i]] for i in range(len(users))]
    listwise = PromptTemplate.load(cfg.template).task == "listwise"
    n_prompts = len(users) * (max(1, params.shuffles) if listwise else k)
    from llmrec.candidates.base import Candidates

    cands = Candidates(items, np.zeros(items.shape, dtype=np.float32), ranked.fallback[users])
    return RerankScores(users, cands, scores, seconds, n_prompts)


def _sample_users(users: np.ndarray, config: EvalConfig) -> np.ndarray:
    if config.max_users is None or config.max_users >= len(users):
        return users
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(users, size=config.max_users, replace=False))


def _fit_info(generators: FittedGenerators, names: list[str]) -> dict[str, Any]:
    return {n: generators.info.get(n) or {"params": generators.params(n)} for n in names}


def _single_domain(data: RecDataset, run: EvalRun) -> tuple[dict, dict, list[str]]:
    config = run.config
    split = leave_one_out(data, order=config.order)
    split_key = digest("loo", run.fingerprint, config.order)
    if config.new_items_fraction:
        split = split.hide_items(items_first_seen_late(data, split.catalog, config.new_items_fraction))
        split_key = digest(split_key, "new-items", config.new_items_fraction)
    elif config.new_items_sample:
        split = split.hide_items(sampled_new_items(split.catalog, config.new_items_sample, config.seed))
        split_key = digest(split_key, "new-items-sample", config.new_items_sample, config.seed)
    generators = FittedGenerators(
        run, TrainData(split.catalog, split.sequences(config.stage)), digest(split_key, config.stage), "all"
    )
    all_users = split.eval_users(config.stage)
    users = _sample_users(all_users, config)
    targets = split.target(config.stage)[users]
    histories = split.histories(config.stage, users)
    validation = None
    if config.rerank and config.stage == "test":
        v_users = users[split.target("valid")[users] >= 0]
        v_train = TrainData(split.catalog, split.sequences("valid"))
        validation = ValidationView(
            FittedGenerators(run, v_train, digest(split_key, "valid"), "valid"),
            split.histories("valid", v_users),
            split.target("valid")[v_users],
            None,
        )
    group = _evaluate_group(run, generators, histories, targets, None, len(split.catalog), "all", validation)
    groups = {
        "all": {**group, "fit": _fit_info(generators, config.methods), "eligible_users": len(all_users)}
    }
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
    if config.only_domain is not None:
        protocol["only_domain"] = (
            f"only the {config.only_domain!r} interactions and items of the dataset, kept before cleaning"
        )
    if split.hidden is not None:
        chosen = (
            f"first seen in the last {config.new_items_fraction:g} of the interactions"
            if config.new_items_fraction
            else f"of a seeded uniform sample ({config.new_items_sample:g} of the {len(split.catalog)} "
            f"catalog items, seed {config.seed})"
        )
        protocol["new_items"] = (
            f"the {int(split.hidden.sum())} items {chosen} have no training interactions: hidden from "
            "every history and fit, still held out"
        )
    return groups, protocol, split.log


def _cross_domain(data: RecDataset, run: EvalRun) -> tuple[dict, dict, list[str]]:
    config = run.config
    assert config.source is not None and config.target is not None  # checked in EvalConfig
    cd = cross_domain_split(
        data, config.source, config.target, config.cold_fraction, config.seed, order=config.order
    )
    split_key = digest(
        "cross",
        run.fingerprint,
        config.source,
        config.target,
        config.cold_fraction,
        config.seed,
        config.order,
    )
    generators = FittedGenerators(
        run, TrainData(cd.catalog, cd.fit_sequences(config.stage)), digest(split_key, config.stage), "fit"
    )
    allowed = cd.catalog.domain_mask(config.target)
    n_eligible = int(allowed.sum())
    targets_all = cd.target_split.target(config.stage)
    groups: dict[str, Any] = {}
    v_generators = None
    if config.rerank and config.stage == "test":
        v_train = TrainData(cd.catalog, cd.fit_sequences("valid"))
        v_generators = FittedGenerators(run, v_train, digest(split_key, "valid"), "valid")
    for group in ("warm", "cold"):
        eligible = cd.users(group, config.stage)
        users = _sample_users(eligible, config)
        histories = cd.histories(group, config.stage, users)
        validation = None
        if v_generators is not None:
            v_targets = cd.target_split.target("valid")
            v_users = users[v_targets[users] >= 0]
            validation = ValidationView(
                v_generators, cd.histories(group, "valid", v_users), v_targets[v_users], allowed
            )
        groups[group] = _evaluate_group(
            run, generators, histories, targets_all[users], allowed, n_eligible, group, validation
        )
        groups[group].update(fit=_fit_info(generators, config.methods), eligible_users=len(eligible))
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
