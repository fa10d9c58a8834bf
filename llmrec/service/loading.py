"""From a config file to a served app: the ``recommend`` settings plus the ``service:`` section.

The file is the one ``llmrec recommend --config`` reads, with an optional ``service:`` mapping;
the recommender is built the way ``llmrec recommend`` builds it (:mod:`llmrec.cli`): the cleaned
data, the retriever fitted on every user's items (or loaded from ``retriever_dir``), the LLM
reranker unless ``no_llm``, the config's shuffles/seed/mode and target domain; plus the
``service.adapters`` a request may choose by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import RecommendConfig, load_recommend_config
from llmrec.llm.reranker import RerankParams
from llmrec.pipeline import Recommender
from llmrec.service.settings import ServiceSettings, service_settings


def load_service_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    service_overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[RecommendConfig, ServiceSettings]:
    """The recommend settings (defaults < file < ``overrides``) and the service settings
    (defaults < the file's ``service:`` < ``LLMREC_SERVICE_*`` < ``service_overrides``)."""
    config, section = load_recommend_config(path, overrides)
    where = str(path) if path is not None else "config"
    settings = service_settings(
        section, os.environ if environ is None else environ, service_overrides, where=f"{where}: service"
    )
    return config, settings


@dataclass
class ServiceParts:
    """What :func:`~llmrec.service.app.create_app` needs besides the settings."""

    recommender: Recommender
    users: dict[str, np.ndarray]
    params: RerankParams
    allowed: np.ndarray | None
    default_n: int
    adapters: dict[str, str | None] = field(default_factory=dict)
    """Names a request may give as ``adapter`` -> the reranker's adapter (None = as configured)."""


def build_parts(config: RecommendConfig, adapters: Mapping[str, str] | None = None) -> ServiceParts:
    """Data, retriever, reranker and ranking options of ``config``, as ``llmrec recommend``;
    ``adapters`` (``service.adapters``): more LoRA adapters requests may name."""
    from llmrec.candidates.base import TrainData
    from llmrec.data import ItemCatalog
    from llmrec.data.split import user_sequences
    from llmrec.pipeline import build_reranker, build_retriever, prepare_data

    cleaned = prepare_data(config)
    catalog = ItemCatalog.from_dataset(cleaned)
    users, seqs = user_sequences(cleaned, catalog, order=config.order)
    saved = getattr(config, "retriever_dir", None)
    retriever = build_retriever(config, None if saved else TrainData(catalog, seqs))
    reranker = None if config.no_llm else build_reranker(config, adapters)
    names: dict[str, str | None] = {}
    if reranker is not None:
        if config.adapter:
            names["default"] = None  # the configured reranker, as it is
        # vllm registers each adapter under its name; vllm-server serves it as the given name
        names.update({n: n if config.backend == "vllm" else t for n, t in (adapters or {}).items()})
    recommender = Recommender(retriever, reranker, config.num_candidates, config.retriever_weight)
    return ServiceParts(
        recommender=recommender,
        users={str(u): s for u, s in zip(users.tolist(), seqs)},
        params=RerankParams(shuffles=config.shuffles, seed=config.seed, mode=config.mode, progress=False),
        allowed=retriever.catalog.domain_mask(config.target),
        default_n=config.n,
        adapters=names,
    )
