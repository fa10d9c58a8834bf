"""Candidate generators: fit on training sequences, return each user's top-k unseen items.

Every generator follows one API (see :class:`~llmrec.candidates.base.CandidateGenerator`)::

    gen = make_generator("ease", l2=300.0).fit(TrainData(catalog, sequences))
    cands = gen.candidates(histories, k=20)   # Candidates(items, scores, fallback)
    gen.save("ease-model"); gen = load_generator("ease-model")   # fit once, load many
"""

from __future__ import annotations

from typing import Any

from llmrec.candidates.base import CandidateGenerator, Candidates, TrainData, param_names
from llmrec.candidates.bm25 import BM25Generator
from llmrec.candidates.crossdomain import CrossDomainEASEGenerator, CrossDomainUserKNNGenerator
from llmrec.candidates.ease import EASEGenerator, PlainEASEGenerator
from llmrec.candidates.embedding import EmbeddingGenerator
from llmrec.candidates.fusion import (
    CrossDomainFusedGenerator,
    FusedGenerator,
    SequentialFusedGenerator,
    default_components,
)
from llmrec.candidates.itemknn import ItemKNNGenerator
from llmrec.candidates.mf import MFGenerator
from llmrec.candidates.new_items import NewItemSlotsGenerator
from llmrec.candidates.persistence import load_generator
from llmrec.candidates.popularity import PopularityGenerator
from llmrec.candidates.text import STOPWORDS, tokenize
from llmrec.candidates.transition import TransitionGenerator
from llmrec.errors import ConfigError

GENERATORS: dict[str, type[CandidateGenerator]] = {
    cls.name: cls
    for cls in (
        PopularityGenerator,
        BM25Generator,
        ItemKNNGenerator,
        MFGenerator,
        EASEGenerator,
        PlainEASEGenerator,
        EmbeddingGenerator,
        TransitionGenerator,
        CrossDomainEASEGenerator,
        CrossDomainUserKNNGenerator,
        FusedGenerator,
        CrossDomainFusedGenerator,
        SequentialFusedGenerator,
        NewItemSlotsGenerator,
    )
}
"""Generator classes by their ``name`` (the value CLI flags and configs use)."""


def make_generator(name: str, *, seed: int | None = None, **params: Any) -> CandidateGenerator:
    """Build the generator registered as ``name`` with hyper-parameters ``params``; ``seed``
    goes to generators that take one (unless ``params`` sets it).

    Raises :class:`~llmrec.errors.ConfigError` naming the valid generator names for an
    unknown ``name``, or the valid parameter names for an unknown parameter.
    """
    try:
        cls = GENERATORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown generator; valid names: {', '.join(GENERATORS)}", parameter="name", value=name
        ) from None
    valid = param_names(cls)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown} for {name!r}; valid parameters: {', '.join(valid) or '(none)'}",
            parameter="params",
            value=unknown,
        )
    if seed is not None and "seed" in valid:
        params.setdefault("seed", seed)
    return cls(**params)


__all__ = [
    "BM25Generator",
    "CandidateGenerator",
    "Candidates",
    "CrossDomainEASEGenerator",
    "CrossDomainFusedGenerator",
    "CrossDomainUserKNNGenerator",
    "EASEGenerator",
    "EmbeddingGenerator",
    "FusedGenerator",
    "GENERATORS",
    "ItemKNNGenerator",
    "MFGenerator",
    "NewItemSlotsGenerator",
    "PlainEASEGenerator",
    "PopularityGenerator",
    "STOPWORDS",
    "SequentialFusedGenerator",
    "TrainData",
    "TransitionGenerator",
    "default_components",
    "load_generator",
    "make_generator",
    "tokenize",
]
