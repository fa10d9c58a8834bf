"""``EvalConfig``: every setting of one ``llmrec evaluate`` run (its fields are the CLI flags)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmrec.config import DataConfig, ModelConfig, RetrieverConfig, from_dict, require_positive, setting
from llmrec.errors import ConfigError

DEFAULT_METHODS = ("popularity", "bm25", "itemknn", "mf", "ease", "fused")
METRICS = ("ndcg@K", "recall@K", "mrr", "cand_recall@K", "coverage@K", "popularity@K")
"""Metric names a suite may ask for (K a cut-off)."""
SLICES = ("history_length", "new_items")
"""User slices beside the groups (all; warm and cold cross-domain)."""
RERANKER_KEYS = (
    "name",
    *(f.name for f in dataclasses.fields(ModelConfig)),
    "shuffles",
    "fusion_weights",
    "ensemble",
)
"""What one entry of ``rerankers`` may set."""
_METRIC = re.compile(r"^(ndcg|recall|cand_recall|coverage|popularity)@(\d+)$")


@dataclass(kw_only=True)
class EvalConfig(ModelConfig, RetrieverConfig, DataConfig):
    """Settings of one evaluation (``llmrec evaluate``): retrieval, optionally the LLM stage."""

    methods: list[str] = setting(list(DEFAULT_METHODS), "Generators to evaluate (comma-separated).")
    stage: Literal["valid", "test"] = setting("test", "'test' (history = train + valid) or 'valid'.")
    ks: list[int] = setting([5, 10, 20], "Cut-offs of NDCG@K / Recall@K.")
    retrieval_batch_size: int = setting(256, "Users scored at once by each generator.")
    max_users: int | None = setting(None, "Evaluate a seeded sample of this many users (per group).")
    bootstrap: int = setting(1000, "Bootstrap resamples over users for CIs and paired comparisons (0 = off).")
    rerank: bool | None = setting(
        None, "Also evaluate the LLM reranking stage (default: when rerankers are given)."
    )
    shuffles: list[int] = setting(
        [0], "Reranker variants, one row each: 0 = retriever order, N = mean over N shuffled orders."
    )
    fusion_weights: list[float] = setting(
        [],
        "Fuse the LLM with the retriever order: the weight is chosen among these, 0 (LLM alone) and "
        "inf (the retriever's order) by NDCG@10 on the same users' validation items, then applied.",
    )
    rerankers: list[dict[str, Any]] = setting(
        [],
        "Several LLM rerankers in one run (YAML only): each a mapping with a name and any model "
        "settings (model, adapter, template, ...), shuffles and fusion_weights.",
    )
    ensemble: list[str] = setting(
        [],
        "A rerankers entry that averages earlier entries (YAML only): their names; its scores are "
        "the mean of their log-softmax scores of each list (no model of its own).",
        yaml_only=True,
    )
    metrics: list[str] = setting(
        [],
        "Metrics of the tables, e.g. ndcg@10,recall@20,cand_recall@20,coverage@10,popularity@10 "
        "(default: NDCG and Recall at every cut-off, MRR, candidate recall).",
    )
    slices: list[str] = setting([], f"User slices to report beside all users: {', '.join(SLICES)}.")
    history_bins: list[int] = setting([5, 20], "history_length slice edges: <=5, 6-20, >20 items.")
    new_item_max_train: int = setting(
        5, "new_items slice: users whose held-out item has fewer than this many training interactions."
    )
    new_items_fraction: float = setting(
        0.0,
        "New-item protocol: items first seen in the last FRACTION of the interactions (by time) lose "
        "every training interaction: no history shows them and no generator is fit on them, but they "
        "stay held-out items (0 = off; single-domain runs).",
    )
    new_items_sample: float = setting(
        0.0,
        "New-item protocol without timestamps: a seeded sample of this FRACTION of the catalog's "
        "items (uniform over items, the seed setting) is hidden as new_items_fraction hides the "
        "late items (0 = off; single-domain runs; not with new_items_fraction).",
    )
    cache: bool = setting(True, "Reuse fitted generators, candidate lists and LLM scores from the cache.")
    cache_dir: str | None = setting(
        None, "Cache folder (default: $LLMREC_CACHE/eval or ~/.cache/llmrec/eval)."
    )

    def _validate(self) -> None:
        if self.rerank is None:
            self.rerank = bool(self.rerankers)
        if (self.source is None) != (self.target is None):
            raise ConfigError(
                "give both source and target, or neither", parameter="source", value=self.source
            )
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
        require_positive(self, "max_users", "retrieval_batch_size", "new_item_max_train")
        self._check_new_items()
        if self.bootstrap < 0:
            raise ConfigError("must be >= 0 (0 = off)", parameter="bootstrap", value=self.bootstrap)
        if any(k < 1 for k in self.ks):
            raise ConfigError("cut-offs must be >= 1", parameter="ks", value=self.ks)
        self._check_metrics()
        unknown = sorted(set(self.slices) - set(SLICES))
        if unknown:
            raise ConfigError(
                f"unknown slice(s); valid: {', '.join(SLICES)}", parameter="slices", value=unknown
            )
        if sorted(self.history_bins) != self.history_bins or any(b < 1 for b in self.history_bins):
            raise ConfigError(
                "must be increasing positive lengths", parameter="history_bins", value=self.history_bins
            )
        if self.rerank and self.rerankers:
            self.reranker_configs()  # every entry checked now, before any work
            if self.retriever not in self.methods:
                self.methods = [*self.methods, self.retriever]

    def _check_new_items(self) -> None:
        for name in ("new_items_fraction", "new_items_sample"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError("must be in [0, 1) (0 = off)", parameter=name, value=value)
            if value and self.target is not None:
                raise ConfigError(
                    "the new-item protocol runs on one domain: drop source/target (only_domain "
                    "keeps one domain of a multi-domain dataset), or set it to 0",
                    parameter=name,
                    value=value,
                )
        if self.new_items_fraction and self.new_items_sample:
            raise ConfigError(
                f"give one way of choosing new items: new_items_fraction={self.new_items_fraction:g} "
                "(the late items) is set too; set one of them to 0",
                parameter="new_items_sample",
                value=self.new_items_sample,
            )

    def _check_metrics(self) -> None:
        for metric in self.metrics:
            match = _METRIC.match(metric)
            if metric != "mrr" and match is None:
                raise ConfigError(
                    f"unknown metric; valid: {', '.join(METRICS)} (K a cut-off)",
                    parameter="metrics",
                    value=metric,
                )
            if match is None:
                continue
            name, k = match.group(1), int(match.group(2))
            if k < 1:
                raise ConfigError("cut-offs must be >= 1", parameter="metrics", value=metric)
            llm_list = name in ("ndcg", "recall") and bool(self.rerank)
            if k > self.num_candidates and (name not in ("ndcg", "recall") or llm_list):
                what = "the LLM stage orders" if llm_list else "there are"
                raise ConfigError(
                    f"K={k} is larger than the candidate list: {what} only num_candidates="
                    f"{self.num_candidates} items; lower K or raise num_candidates",
                    parameter="metrics",
                    value=metric,
                )
        ks = sorted({int(m.split("@")[1]) for m in self.metrics if m.split("@")[0] in ("ndcg", "recall")})
        if ks:
            self.ks = ks

    def report_metrics(self) -> list[str]:
        """The metrics the tables show."""
        if self.metrics:
            return list(self.metrics)
        return (
            [f"ndcg@{k}" for k in self.ks]
            + [f"recall@{k}" for k in self.ks]
            + [
                "mrr",
                f"cand_recall@{self.num_candidates}",
            ]
        )

    def reranker_configs(self) -> list[tuple[str, EvalConfig]]:
        """(name, config) of each LLM reranker: the ``rerankers`` entries over this config, or
        this config's own model settings when there are none."""
        if not self.rerank:
            return []
        if self.ensemble:
            raise ConfigError("is a setting of a rerankers entry", parameter="ensemble", value=self.ensemble)
        if not self.rerankers:
            return [(self.model, self)]
        base = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(EvalConfig)
            if f.name not in ("rerankers", "ensemble")
        }
        out: list[tuple[str, EvalConfig]] = []
        for i, entry in enumerate(self.rerankers):
            where = f"rerankers[{i}]"
            if not isinstance(entry, dict):
                raise ConfigError("must be a mapping of settings", parameter=where, value=entry)
            unknown = sorted(set(entry) - set(RERANKER_KEYS))
            if unknown:
                raise ConfigError(
                    f"unknown setting(s); valid: {', '.join(RERANKER_KEYS)}", parameter=where, value=unknown
                )
            name = str(entry.get("name") or entry.get("adapter") or entry.get("model") or f"llm{i}")
            if name in {n for n, _ in out}:
                raise ConfigError("reranker names must be distinct", parameter=f"{where}.name", value=name)
            self._check_ensemble(entry, where, out)
            values = {**base, **{k: v for k, v in entry.items() if k != "name"}, "rerank": True}
            defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
            for key in ("template", "max_prompt_tokens", "model"):  # the adapter's manifest may set them
                if key not in entry and "adapter" in entry:
                    values[key] = defaults[key]
            out.append((name, from_dict(EvalConfig, values, where=where)))
        return out

    @staticmethod
    def _check_ensemble(entry: dict[str, Any], where: str, earlier: list[tuple[str, EvalConfig]]) -> None:
        """An ``ensemble`` entry names two or more earlier model entries and sets no model of its own."""
        members = entry.get("ensemble")
        if members is None:
            return
        if not isinstance(members, list) or len(members) < 2:
            raise ConfigError(
                "must list the names of two or more earlier rerankers",
                parameter=f"{where}.ensemble",
                value=members,
            )
        models = {n: c for n, c in earlier if not c.ensemble}
        missing = [m for m in members if m not in models]
        if missing:
            raise ConfigError(
                f"not an earlier reranker with a model; earlier: {', '.join(models) or 'none'}",
                parameter=f"{where}.ensemble",
                value=missing,
            )
        own = sorted(set(entry) & {f.name for f in dataclasses.fields(ModelConfig)})
        if own:
            raise ConfigError(
                "an ensemble reads its members' scores and takes no model settings",
                parameter=where,
                value=own,
            )


EMBEDDED_NAMES = ("ml-latest-small",)


@dataclass(kw_only=True)
class SuiteConfig(EvalConfig):
    """An evaluation suite (``eval/*.yaml``): the settings of :class:`EvalConfig` plus a name
    and optional ``runs``, each a named set of overrides (e.g. two cross-domain directions)."""

    name: str = setting("", "Suite name (the report's title).")
    description: str = setting("", "What the suite measures.")
    runs: list[dict[str, Any]] = setting([], "Named runs, each overriding settings (YAML only).")

    def _validate(self) -> None:
        self.run_configs()

    def run_configs(self) -> list[tuple[str, EvalConfig]]:
        """(name, config) of each run; every run's dataset must exist."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalConfig)}
        entries = self.runs or [{"name": "all"}]
        out: list[tuple[str, EvalConfig]] = []
        for i, entry in enumerate(entries):
            where = f"runs[{i}]"
            if not isinstance(entry, dict) or not entry.get("name"):
                raise ConfigError("each run is a mapping with a name", parameter=where, value=entry)
            cfg = from_dict(
                EvalConfig, {**base, **{k: v for k, v in entry.items() if k != "name"}}, where=where
            )
            if cfg.dataset not in EMBEDDED_NAMES and not Path(cfg.dataset).expanduser().exists():
                raise ConfigError(
                    f"dataset not found (a folder, or one of {', '.join(EMBEDDED_NAMES)})",
                    parameter=f"{where}.dataset" if "dataset" in entry else "dataset",
                    value=cfg.dataset,
                )
            out.append((str(entry["name"]), cfg))
        if len({n for n, _ in out}) != len(out):
            raise ConfigError("run names must be distinct", parameter="runs", value=[n for n, _ in out])
        return out
