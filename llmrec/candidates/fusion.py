"""Fusion of several generators: reciprocal-rank fusion or weighted normalized scores."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmrec.candidates.base import CandidateGenerator, CompositeGenerator, TrainData, apply_masks
from llmrec.candidates.persistence import read_generator, write_generator
from llmrec.data.catalog import History, ItemCatalog
from llmrec.errors import ConfigError, LlmrecWarning
from llmrec.ranking import top_k

METHODS = ("rrf", "weighted")
COMPOSE_ROWS = 1024
"""Rows fused at once (each block holds one float64 row block and the components' scores)."""


def default_components(seed: int = 0) -> list[CandidateGenerator]:
    """The components :class:`FusedGenerator` uses when none are given: bm25 + ease + itemknn + mf.

    Chosen on ml-latest-small *validation* users (fit on train, NDCG@10 against all
    items, ``method="weighted"``): all four 0.0912, without bm25 0.0836, ease alone
    0.0804. BM25 also serves free-text-only users. EASE is skipped (with a warning)
    on catalogs above its ``max_items``.
    """
    from llmrec.candidates.bm25 import BM25Generator
    from llmrec.candidates.ease import EASEGenerator
    from llmrec.candidates.itemknn import ItemKNNGenerator
    from llmrec.candidates.mf import MFGenerator

    return [BM25Generator(), ItemKNNGenerator(), MFGenerator(seed=seed), EASEGenerator()]


class FusedGenerator(CompositeGenerator):
    """Combine component generators into one ranking.

    ``method="rrf"``: ``score(i) = sum_c w_c / (rrf_k + rank_c(i))`` over the items in each
    component's top-``depth`` (history and disallowed items excluded before ranking).
    ``method="weighted"``: ``sum_c w_c * minmax_c(i)``, each component's scores min-max
    normalized per row over its eligible items.

    A component contributes nothing to a row where it has no signal: an all-zero score
    row, which is what every generator returns when it cannot use a history (e.g. CF
    components for a free-text-only new user). ``uses_text`` is true when any component's is.

    Parameters
    ----------
    generators:
        Unfitted components; ``None`` = :func:`default_components`. ``fit`` fits them all.
    weights:
        One per component (default 1 each).
    method, rrf_k, depth:
        See above; ``rrf_k`` and ``depth`` only matter for ``"rrf"``. The default,
        ``"weighted"``, beat RRF on ml-latest-small validation (NDCG@10 0.0912 vs 0.0804 at
        rrf_k=60, 0.0862 at rrf_k=10, same four components).
    seed:
        Passed to the default components.
    extra, extra_weights:
        More components, by registered name (e.g. ``["embedding"]``), appended to the
        default ones with these weights (default 1 each). Weight 0 fits a component without
        fusing it: it only adds its column to the reranker's evidence
        (:func:`~llmrec.candidates.evidence.candidate_evidence`), so the candidates stay
        those of the defaults. Only with the default components.
    """

    name = "fused"
    parallel_scoring = True  # when every component's is (see rank_methods)

    def __init__(
        self,
        generators: list[CandidateGenerator] | None = None,
        weights: list[float] | None = None,
        method: str = "weighted",
        rrf_k: float = 60.0,
        depth: int = 100,
        seed: int = 0,
        extra: list[str] | None = None,
        extra_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"must be one of {METHODS}", parameter="method", value=method)
        if rrf_k < 0:
            raise ConfigError("must be >= 0", parameter="rrf_k", value=rrf_k)
        if depth < 1:
            raise ConfigError("must be >= 1", parameter="depth", value=depth)
        generators_given = generators
        if extra_weights is not None and extra is None:
            raise ConfigError(
                "needs `extra` (the components to weigh)", parameter="extra_weights", value=extra_weights
            )
        if generators is None:
            generators, default_weights = self._defaults(seed)
            weights = default_weights if weights is None else weights
            if extra:
                added, added_weights = self._extra_components(extra, extra_weights, seed)
                weights = [*([1.0] * len(generators) if weights is None else weights), *added_weights]
                generators = [*generators, *added]
        elif extra:
            raise ConfigError(
                "adds to the default components; list every component in `generators` instead",
                parameter="extra",
                value=extra,
            )
        generators = list(generators)
        if not generators:
            raise ConfigError("needs at least one component", parameter="generators", value=generators)
        for g in generators:
            if not isinstance(g, CandidateGenerator):
                raise ConfigError(
                    "components must be CandidateGenerator instances", parameter="generators", value=g
                )
        weights = [1.0] * len(generators) if weights is None else [float(w) for w in weights]
        if len(weights) != len(generators):
            raise ConfigError(
                f"needs one weight per component ({len(generators)})", parameter="weights", value=weights
            )
        if any(w < 0 for w in weights):
            raise ConfigError("must be >= 0", parameter="weights", value=weights)
        self.generators = generators
        self.weights = weights
        self.method = method
        self.rrf_k = rrf_k
        self.depth = depth
        self.seed = seed
        self.extra = list(extra) if extra else None
        self.extra_weights = None if extra_weights is None else [float(w) for w in extra_weights]
        self.uses_text = any(g.uses_text for g in generators)
        self._default_components = generators_given is None
        self.active: list[bool] | None = None
        """Per component, whether it was fitted and is used (default components that cannot
        handle the catalog, e.g. EASE above ``max_items``, are skipped with a warning)."""
        self._prefitted: set[int] = set()

    @classmethod
    def _defaults(cls, seed: int) -> tuple[list[CandidateGenerator], list[float] | None]:
        """Components (and weights, None = 1 each) used when none are given."""
        return default_components(seed), None

    @staticmethod
    def _extra_components(
        names: list[str], weights: list[float] | None, seed: int
    ) -> tuple[list[CandidateGenerator], list[float]]:
        """The ``extra`` components, built by name, and their weights (1 each by default)."""
        from llmrec.candidates import make_generator

        if weights is None:
            weights = [1.0] * len(names)
        if len(weights) != len(names):
            raise ConfigError(
                f"needs one weight per extra component ({len(names)})",
                parameter="extra_weights",
                value=weights,
            )
        return [make_generator(name, seed=seed) for name in names], [float(w) for w in weights]

    def use_fitted(self, fitted: Mapping[str, CandidateGenerator | None]) -> FusedGenerator:
        """Take components from ``fitted`` (by name) instead of fitting them again; returns ``self``.

        A component is replaced only by a fitted generator of the same class and parameters,
        which the caller guarantees was fit on the training data ``fit`` will be given (an
        evaluation fits ``ease`` once for its own row and for ``fused``). Same scores as a refit:
        fitting is deterministic.
        """
        for i, g in enumerate(self.generators):
            other = fitted.get(g.name)
            same = other is not None and type(other) is type(g) and other.params() == g.params()
            if same and other.catalog is not None:
                self.generators[i] = other
                self._prefitted.add(i)
        return self

    def _fit(self, train: TrainData) -> None:
        active = []
        for i, g in enumerate(tqdm(self.generators, desc=f"{self.name} fit", leave=False)):
            if i in self._prefitted:
                active.append(True)
                continue
            try:
                g.fit(train)
            except ConfigError as exc:
                # Components the caller chose must work; a default one may be dropped.
                if not self._default_components:
                    raise
                warnings.warn(
                    f"fused: skipping default component {g.name!r}: {exc}", LlmrecWarning, stacklevel=3
                )
                active.append(False)
                continue
            active.append(True)
        self.active = active
        self._prefitted = set()  # a later fit (other data) fits every component

    def params(self) -> dict[str, Any]:
        # The components are saved in sub-folders, not as a parameter.
        return {k: v for k, v in super().params().items() if k != "generators"}

    @classmethod
    def _from_saved(cls, params: dict[str, Any], folder: Path, catalog: ItemCatalog) -> FusedGenerator:
        parts = [read_generator(folder / f"component{i}", catalog) for i in range(len(params["weights"]))]
        params = dict(params)
        # The saved components already include the extra ones.
        extra, extra_weights = params.pop("extra", None), params.pop("extra_weights", None)
        fused = cls(generators=parts, **params)
        fused.extra, fused.extra_weights = extra, extra_weights
        return fused

    def _save_state(self, folder: Path) -> None:
        # A component skipped at fit time is saved unfitted (its parameters only).
        for i, (g, on) in enumerate(zip(self.generators, self.active)):
            write_generator(g, folder / f"component{i}", fitted=on)

    def _load_state(self, folder: Path) -> None:
        self.active = [g.catalog is not None for g in self.generators]

    def masked_scores_given(
        self,
        histories: Sequence[History],
        given: Mapping[int, np.ndarray],
        exclude_history: bool = True,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`masked_scores`, reading a component's scores from ``given`` (by ``id`` of the
        component) instead of scoring again: its ``masked_scores`` of the same ``histories``
        with the same masks, as an evaluation that ranks the components too has them."""
        self._check_fitted()
        scores = self._compose(histories, exclude_history, allowed, given)
        return apply_masks(scores, histories, exclude_history, allowed)

    def _compose(
        self,
        histories: Sequence[History],
        exclude_history: bool,
        allowed: np.ndarray | None,
        given: Mapping[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        # Rows are independent: blocks bound the float64 sums and the components' score arrays.
        out = np.empty((len(histories), len(self.catalog)), dtype=np.float32)
        for lo in range(0, len(histories), COMPOSE_ROWS):
            hi = min(lo + COMPOSE_ROWS, len(histories))
            part = {key: scores[lo:hi] for key, scores in (given or {}).items()}
            out[lo:hi] = self._compose_block(histories[lo:hi], exclude_history, allowed, part)
        return out

    def _compose_block(
        self,
        histories: Sequence[History],
        exclude_history: bool,
        allowed: np.ndarray | None,
        given: Mapping[int, np.ndarray],
    ) -> np.ndarray:
        """:meth:`_compose` of one block of rows: float64 sums, cast to float32 once."""
        n, n_items = len(histories), len(self.catalog)
        fused = np.zeros((n, n_items), dtype=np.float64)
        has_items = np.array([len(h.items) > 0 for h in histories], dtype=bool)
        for g, w, on in zip(self.generators, self.weights, self.active):
            if w == 0 or not on:
                continue
            rows = np.arange(n) if g.uses_text else np.flatnonzero(has_items)
            if not len(rows):
                continue
            if len(rows) == n and id(g) in given:
                scores = given[id(g)].copy()  # the normalisation below works in place
            else:
                sub = histories if len(rows) == n else [histories[r] for r in rows]
                scores = g.masked_scores(sub, exclude_history, allowed)
            finite = np.isfinite(scores)
            signal = np.any(finite & (scores != 0.0), axis=1)
            if not signal.all():
                rows, scores, finite = rows[signal], scores[signal], finite[signal]
            if not len(rows):
                continue
            target = slice(None) if len(rows) == n else rows
            if self.method == "rrf":
                items, _ = top_k(scores, self.depth, g.tie_rank)
                ranks = np.broadcast_to(np.arange(1, items.shape[1] + 1), items.shape)
                ok = items >= 0
                r_idx = np.broadcast_to(rows[:, None], items.shape)[ok]
                fused[r_idx, items[ok]] += w / (self.rrf_k + ranks[ok])
            else:
                fused[target] += _minmax_weighted(scores, finite, w)
        return fused.astype(np.float32)


def _minmax_weighted(scores: np.ndarray, finite: np.ndarray, weight: float) -> np.ndarray:
    """``weight * minmax(scores)`` per row over the finite entries, 0 elsewhere, in float32.

    Overwrites ``scores``. In place, with the same float32 operations in the same order as
    ``w * where(ok, (s - lo) / span, 0)``, so the fused sums are bit for bit unchanged.
    """
    lo = np.where(finite, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, scores, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    norm = np.subtract(scores, lo, out=scores)
    norm /= np.where(span > 0, span, 1.0)
    norm[~(finite & (span > 0))] = 0.0
    norm *= weight
    return norm


class CrossDomainFusedGenerator(FusedGenerator):
    """``fused`` plus the cross-domain generators ``cross-ease`` and ``cross-userknn``,
    registered as ``fused-cross``.

    Users with only another domain's history (cold-start) get the cross-domain links on top of
    what the within-domain components find; a user whose history lies in the ranked domain gets
    nothing from them (no signal, no contribution), so warm users rank as under ``fused``. The
    default weights (1 per default component and ``cross-ease``, 8 for ``cross-userknn``) were
    chosen on the *validation* cold-start users of Amazon arts -> office: NDCG@10 0.0253
    without either, 0.0314 with ``cross-ease`` at 4 (the earlier default), 0.0345 with
    ``cross-userknn`` alone at 8, 0.0347 with both (candidate Recall@20 0.0559 / 0.0652 /
    0.0822 / 0.0822; grid: ``cross-ease`` 0-8, ``cross-userknn`` 0-32). On a one-domain
    catalog both are skipped with a warning and this is ``fused``.
    """

    name = "fused-cross"

    @classmethod
    def _defaults(cls, seed: int) -> tuple[list[CandidateGenerator], list[float] | None]:
        from llmrec.candidates.crossdomain import CrossDomainEASEGenerator, CrossDomainUserKNNGenerator

        generators = [*default_components(seed), CrossDomainEASEGenerator(), CrossDomainUserKNNGenerator()]
        return generators, [1.0] * (len(generators) - 1) + [8.0]


class SequentialFusedGenerator(FusedGenerator):
    """``fused`` plus ``transition``: the default components and the next-item transitions of
    the user's last few items, registered as ``fused-seq``.

    EASE, item-kNN, MF and BM25 read a history as a set; ``transition`` adds the order in
    which users move through the catalog. Its weight (1, like every default component) was
    chosen on ml-latest-small *validation* users (NDCG@10 0.0905 without it, 0.1008 / 0.1054 /
    0.1009 / 0.0891 at weight 0.5 / 1 / 2 / 4). A history without items (free text only) gets
    nothing from ``transition`` and ranks as under ``fused``.
    """

    name = "fused-seq"

    @classmethod
    def _defaults(cls, seed: int) -> tuple[list[CandidateGenerator], list[float] | None]:
        from llmrec.candidates.transition import TransitionGenerator

        return [*default_components(seed), TransitionGenerator()], None
