"""``EvalConfig``: every setting of one ``llmrec evaluate`` run (its fields are the CLI flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmrec.config import DataConfig, ModelConfig, RetrieverConfig, require_positive, setting
from llmrec.errors import ConfigError

DEFAULT_METHODS = ("popularity", "bm25", "itemknn", "mf", "ease", "fused")


@dataclass(kw_only=True)
class EvalConfig(ModelConfig, RetrieverConfig, DataConfig):
    """Settings of one evaluation (``llmrec evaluate``): retrieval, optionally the LLM stage."""

    methods: list[str] = setting(list(DEFAULT_METHODS), "Generators to evaluate (comma-separated).")
    stage: Literal["valid", "test"] = setting("test", "'test' (history = train + valid) or 'valid'.")
    ks: list[int] = setting([5, 10, 20], "Cut-offs of NDCG@K / Recall@K.")
    retrieval_batch_size: int = setting(256, "Users scored at once by each generator.")
    max_users: int | None = setting(None, "Evaluate a seeded sample of this many users (per group).")
    bootstrap: int = setting(1000, "Bootstrap resamples over users for CIs and paired comparisons (0 = off).")
    rerank: bool = setting(False, "Also evaluate the LLM reranking stage.")
    shuffles: list[int] = setting(
        [0], "Reranker variants, one row each: 0 = retriever order, N = mean over N shuffled orders."
    )
    fusion_weights: list[float] = setting(
        [],
        "Fuse the LLM with the retriever order: the weight is chosen among these, 0 (LLM alone) and "
        "inf (the retriever's order) by NDCG@10 on the same users' validation items, then applied.",
    )

    def _validate(self) -> None:
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
        require_positive(self, "max_users", "retrieval_batch_size")
        if self.bootstrap < 0:
            raise ConfigError("must be >= 0 (0 = off)", parameter="bootstrap", value=self.bootstrap)
        if any(k < 1 for k in self.ks):
            raise ConfigError("cut-offs must be >= 1", parameter="ks", value=self.ks)
