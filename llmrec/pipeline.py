"""The one ranking path: candidates -> prompt -> LLM scores -> fusion with the retriever -> order.

:class:`Recommender` is what ``llmrec recommend``, the LlamaRec-protocol evaluation, the
in-training validation ranking and the benchmarks all call. It works on catalog indices;
titles are looked up inside it, and the LLM's scores are fused with the retriever's order in
one place (:func:`order_candidates`). Callers may pass candidates (e.g. a fixed list to
evaluate the reranker alone) or have them retrieved.

The ``build_*`` functions assemble the stages from the typed configs of :mod:`llmrec.config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from llmrec.candidates.base import CandidateGenerator, Candidates, TrainData
from llmrec.data.catalog import History, ItemCatalog, split_titles
from llmrec.errors import ConfigError

if TYPE_CHECKING:
    from llmrec.candidates.evidence import Evidence
    from llmrec.config import DataConfig, ModelConfig, RetrieverConfig
    from llmrec.data.schema import RecDataset
    from llmrec.llm.reranker import LLMReranker, RerankParams


@dataclass
class RankedList:
    """One user's recommendations, best first."""

    item_ids: list[str]
    titles: list[str]
    scores: list[float]
    """Final scores: the reranker's (fused with the retriever order when a weight is set), or
    the retriever's without a reranker."""
    retriever_ranks: list[int] = field(default_factory=list)
    """1-based position of each item in the retriever's list."""

    def to_dict(self) -> dict:
        return {
            "items": [
                {"rank": r + 1, "item_id": i, "title": t, "score": s, "retriever_rank": rr}
                for r, (i, t, s, rr) in enumerate(
                    zip(self.item_ids, self.titles, self.scores, self.retriever_ranks, strict=True)
                )
            ]
        }


@dataclass
class Ranking:
    """Ranked candidate lists of a batch of users: ``n_users x k`` arrays, best first."""

    items: np.ndarray
    """Catalog indices (-1 = padding)."""
    scores: np.ndarray
    retriever_ranks: np.ndarray
    """1-based position of each item in the retriever's list (0 = padding)."""
    fallback: np.ndarray
    """Rows the retriever ranked by popularity (no usable history)."""

    def rank_of(self, targets: np.ndarray) -> np.ndarray:
        """1-based rank of ``targets[u]`` in row ``u``; 0 where it is not in the list."""
        hits = self.items == np.asarray(targets)[:, None]
        return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)

    def lists(self, catalog: ItemCatalog, n: int | None = None) -> list[RankedList]:
        """The top-``n`` of each row with ids and titles."""
        out = []
        for items, scores, ranks in zip(self.items, self.scores, self.retriever_ranks):
            keep = np.flatnonzero(items >= 0)[:n]
            out.append(
                RankedList(
                    item_ids=[str(catalog.item_ids[items[j]]) for j in keep],
                    titles=[catalog.titles[items[j]] for j in keep],
                    scores=[float(scores[j]) for j in keep],
                    retriever_ranks=[int(ranks[j]) for j in keep],
                )
            )
        return out


def history_titles(history: History, catalog: ItemCatalog) -> list[str]:
    """Titles the prompt shows: known items (oldest first), then typed titles not in the catalog."""
    titles = [catalog.titles[int(i)] for i in history.items]
    titles += split_titles(history.text)
    return titles


def fuse_with_retriever(llm_scores: np.ndarray, weight: float) -> np.ndarray:
    """LLM candidate scores fused with the retriever's order (candidates in retriever order).

    ``log_softmax(llm_scores) + weight * log(1 / (position + 1))``: the LLM's distribution over
    the candidates times a Zipf prior over the retriever's ranks raised to ``weight``. 0 keeps
    the LLM's order; a large weight keeps the retriever's order, the LLM breaking near-ties;
    ``inf`` is the retriever's order exactly. Both terms are scale-free, so one weight
    transfers across users and list lengths.
    """
    llm = np.asarray(llm_scores, dtype=np.float64)
    if weight == 0:
        return llm
    if np.isinf(weight):  # the retriever's order; the LLM has no say
        return -np.arange(len(llm), dtype=np.float64)
    shifted = llm - llm.max()
    log_probs = shifted - np.log(np.exp(shifted).sum())
    return log_probs - weight * np.log1p(np.arange(len(llm), dtype=np.float64))


def rerank_order(scores: np.ndarray) -> np.ndarray:
    """Candidate positions sorted by score desc; ties keep the retriever's order."""
    return np.lexsort((np.arange(len(scores)), -scores))


def order_candidates(
    candidates: Candidates, llm_scores: Sequence[np.ndarray] | None, retriever_weight: float
) -> Ranking:
    """Sort each candidate list by the LLM scores fused with the retriever order (the one
    place fusion happens); without LLM scores, the retriever's order."""
    n, k = candidates.items.shape
    items = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf)
    ranks = np.zeros((n, k), dtype=np.int64)
    for u in range(n):
        valid = np.flatnonzero(candidates.items[u] >= 0)
        if llm_scores is None:
            final, order = candidates.scores[u, valid].astype(np.float64), np.arange(len(valid))
        else:
            final = fuse_with_retriever(llm_scores[u], retriever_weight)
            order = rerank_order(final)
        items[u, : len(order)] = candidates.items[u, valid[order]]
        scores[u, : len(order)] = final[order]
        ranks[u, : len(order)] = valid[order] + 1
    return Ranking(items, scores, ranks, candidates.fallback)


class Recommender:
    """A fitted candidate generator followed by an optional LLM reranker.

    ``retriever_weight`` fuses the LLM's scores with the retriever's order (0 = the LLM alone;
    see :func:`fuse_with_retriever`); choose it on validation users
    (``llmrec evaluate --fusion-weights``).
    """

    def __init__(
        self,
        generator: CandidateGenerator,
        reranker: LLMReranker | None = None,
        num_candidates: int = 20,
        retriever_weight: float = 0.0,
    ) -> None:
        if generator.catalog is None:
            raise RuntimeError("fit the candidate generator before building a Recommender")
        self.generator = generator
        self.catalog: ItemCatalog = generator.catalog
        self.reranker = reranker
        self.num_candidates = num_candidates
        self.retriever_weight = retriever_weight

    def retrieve(self, histories: Sequence[History], allowed: np.ndarray | None = None) -> Candidates:
        """The retriever's top-``num_candidates`` unseen items per history."""
        return self.generator.candidates(histories, k=self.num_candidates, allowed=allowed)

    def llm_scores(
        self, histories: Sequence[History], items: np.ndarray, params: RerankParams | None = None
    ) -> list[np.ndarray]:
        """The LLM's score of each candidate (retriever order, padding dropped), per history."""
        if self.reranker is None:
            raise RuntimeError("this Recommender has no LLM reranker")
        return self.reranker.score(*self.texts(histories, items), params, self.evidence(histories, items))

    def evidence(self, histories: Sequence[History], items: np.ndarray) -> list[Evidence] | None:
        """What the retriever knows about each candidate, when the reranker's template shows it
        (:func:`~llmrec.candidates.evidence.candidate_evidence`); else None."""
        if self.reranker is None or not self.reranker.template.evidence:
            return None
        from llmrec.candidates.evidence import candidate_evidence

        return candidate_evidence(self.generator, histories, items)

    def texts(
        self, histories: Sequence[History], items: np.ndarray
    ) -> tuple[list[list[str]], list[list[str]]]:
        """What the prompt shows: history titles and candidate titles (padding dropped), per user."""
        hist = [history_titles(h, self.catalog) for h in histories]
        return hist, [[self.catalog.titles[i] for i in row if i >= 0] for row in items]

    def rank(
        self,
        histories: Sequence[History],
        candidates: Candidates | None = None,
        allowed: np.ndarray | None = None,
        params: RerankParams | None = None,
    ) -> Ranking:
        """Rank ``candidates`` (retrieved when not given) for each history."""
        cands = candidates if candidates is not None else self.retrieve(histories, allowed)
        scores = None if self.reranker is None else self.llm_scores(histories, cands.items, params)
        return self.order(cands, scores)

    def order(
        self,
        candidates: Candidates,
        llm_scores: Sequence[np.ndarray] | None,
        retriever_weight: float | None = None,
    ) -> Ranking:
        """The final order of ``candidates``: the LLM's scores (None = the retriever's order)
        fused with the retriever's order at ``retriever_weight`` (default: this Recommender's)."""
        weight = self.retriever_weight if retriever_weight is None else retriever_weight
        return order_candidates(candidates, llm_scores, weight)

    def recommend(
        self,
        histories: Sequence[History],
        n: int = 10,
        params: RerankParams | None = None,
        allowed: np.ndarray | None = None,
    ) -> list[RankedList]:
        """Top-``n`` items per history with ids and titles."""
        return self.rank(histories, allowed=allowed, params=params).lists(self.catalog, n)


# --- building the stages from configs -------------------------------------------------------


def load_data(config: DataConfig) -> RecDataset:
    """Load ``config.dataset`` as it is (its ``format``; generic tables with ``columns``), cut
    down to ``config.only_domain`` when that is set."""
    data = _load_source(config)
    return data if config.only_domain is None else data.only_domain(config.only_domain)


def _load_source(config: DataConfig) -> RecDataset:
    from llmrec.data import load_dataset
    from llmrec.data.formats.tables import ColumnMapping

    if not config.columns:
        return load_dataset(config.dataset, config.format)
    fields = {f.name for f in dataclasses.fields(ColumnMapping)} - {"text"}
    unknown = sorted(set(config.columns) - fields)
    if unknown:
        raise ConfigError(
            f"unknown field(s) {unknown}; valid: {', '.join(sorted(fields))}",
            parameter="columns",
            value=config.columns,
        )
    return load_dataset(config.dataset, config.format or "tables", mapping=ColumnMapping(**config.columns))


def prepare_data(config: DataConfig) -> RecDataset:
    """Load and clean ``config.dataset`` (k-core, minimum rating): every stage starts here."""
    from llmrec.data import CleaningConfig, clean

    return clean(load_data(config), CleaningConfig(k_core=config.k_core, min_rating=config.min_rating))


def build_retriever(
    config: RetrieverConfig, train: TrainData | None, name: str | None = None
) -> CandidateGenerator:
    """The retriever of ``config`` (or generator ``name``), fitted on ``train`` — or loaded from
    ``config.retriever_dir`` when that is set (fit once, load many)."""
    from llmrec.candidates import make_generator

    name = name or config.retriever
    saved = getattr(config, "retriever_dir", None)
    if saved and name == config.retriever:
        from llmrec.candidates import load_generator

        return load_generator(saved, name)
    if train is None:
        raise RuntimeError("build_retriever needs training data or config.retriever_dir")
    seed = getattr(config, "seed", 0)
    return make_generator(name, seed=seed, **config.generator_params.get(name, {})).fit(train)


def build_reranker(config: ModelConfig, adapters: Mapping[str, str] | None = None) -> LLMReranker:
    """Load the LLM engine of ``config`` once and wrap it in an LLMReranker.

    ``adapters``: more LoRA adapters by name (``LLMReranker.for_adapter`` picks one per call):
    PEFT folders registered in the engine for 'vllm'; for 'vllm-server' the server serves them
    already. 'transformers' applies one adapter only, so it refuses any.
    """
    from llmrec.llm import load_reranker

    if adapters and config.backend == "transformers":
        raise ConfigError(
            "the transformers backend applies only the config's adapter; use backend vllm or "
            "vllm-server to choose adapters per request",
            parameter="adapters",
            value=sorted(adapters),
        )
    engine_options = {
        "transformers": {"device": config.device, "dtype": config.dtype, "threads": config.threads},
        "vllm": {"dtype": config.dtype, "cpu_bind": config.cpu_bind},
        "vllm-server": {
            "connect_timeout_s": config.connect_timeout_s,
            "read_timeout_s": config.read_timeout_s,
            "retries": config.retries,
        },
    }.get(config.backend, {})
    if adapters and config.backend == "vllm":
        engine_options["adapters"] = dict(adapters)
    return load_reranker(
        config.model,
        backend=config.backend,
        server_url=config.server_url,
        template=config.template,
        adapter=config.adapter,
        quantization=config.quantization,
        batch_size=config.batch_size,
        max_prompt_tokens=config.max_prompt_tokens,
        scorer=config.scorer,
        likelihood_header=config.likelihood_header,
        **engine_options,
    )
