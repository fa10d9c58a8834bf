"""Training examples for the listwise reranker: history -> candidate pool -> label letter.

One example per (user, target position). The target is a *training* item of the user:
the last one (``windows=1``) and, with ``windows=W``, also the ``W - 1`` items before it
(sliding window over the sequence); the history is everything before the target.
Candidates are the target plus negatives: ``hard_fraction`` of them are the retriever's
best items for that history (what the reranker faces at test time), the rest random
catalog items. Negatives never include anything the user interacted with (validation
and test items included), and the candidate order is shuffled with a per-example seeded
RNG, so the label letter carries no position information.

``candidate_order="retriever"`` instead builds exactly what the reranker sees at test
time: the retriever's top-``num_candidates`` list for the history, in the retriever's
order, kept only when the target is in it (the reranker cannot change anyone else's
rank). The model then learns the retriever's position prior and what to change about it.

Leakage guarantee for a :class:`~llmrec.data.LeaveOneOutSplit`: history and target come
from ``split.train`` only and negatives exclude every item of the user, so neither the
validation nor the test item of a user can appear in any of that user's prompts. Fit the
retriever on ``split.sequences("valid")`` (train items only) so its hard negatives are
not shaped by held-out items either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from llmrec.candidates.base import CandidateGenerator
from llmrec.data.catalog import History, ItemCatalog
from llmrec.data.split import CrossDomainSplit, LeaveOneOutSplit
from llmrec.errors import ConfigError
from llmrec.finetune.config import CANDIDATE_ORDERS
from llmrec.llm.prompting import PromptRenderer

logger = logging.getLogger(__name__)

COLUMNS = (
    "prompt",
    "completion",
    "user",
    "user_id",
    "target_item",
    "position",
    "history_items",
    "candidate_items",
)
"""Columns of :func:`build_examples`' dataset. ``position`` is the target's index in the user's
training sequence; ``candidate_items`` lists the candidates in prompt (label) order."""


@dataclass
class _Source:
    """What examples are built from, whatever the input type."""

    catalog: ItemCatalog
    sequences: list[np.ndarray]
    seen: list[np.ndarray]
    user_ids: np.ndarray
    allowed: np.ndarray | None


def _resolve_source(
    source: LeaveOneOutSplit | CrossDomainSplit | Sequence[np.ndarray],
    catalog: ItemCatalog | None,
    seen: Sequence[np.ndarray] | None,
    allowed: np.ndarray | None,
) -> _Source:
    if isinstance(source, LeaveOneOutSplit):
        held_out = [np.array([v, t], dtype=np.int64) for v, t in zip(source.valid, source.test)]
        seen_all = [np.concatenate([tr, h[h >= 0]]) for tr, h in zip(source.train, held_out)]
        mask = domains_mask(source.catalog, seen_all) if allowed is None else allowed
        return _Source(source.catalog, list(source.train), seen_all, source.user_ids, mask)
    if isinstance(source, CrossDomainSplit):
        # Source-domain tuning: the source histories are training data; negatives come from
        # the source domain and exclude everything the user did in either domain.
        split = source.target_split
        seen_all = []
        for u, seq in enumerate(source.source_seqs):
            target_items = np.concatenate([split.train[u], [split.valid[u], split.test[u]]])
            seen_all.append(np.concatenate([seq, target_items[target_items >= 0]]))
        mask = source.catalog.domain_mask(source.source) if allowed is None else allowed
        return _Source(source.catalog, list(source.source_seqs), seen_all, source.user_ids, mask)
    if catalog is None:
        raise ConfigError(
            "pass the ItemCatalog when giving raw sequences", parameter="catalog", value=catalog
        )
    sequences = [np.asarray(s, dtype=np.int64) for s in source]
    if seen is not None and len(seen) != len(sequences):
        raise ConfigError(
            f"needs one array per sequence ({len(sequences)})", parameter="seen", value=len(seen)
        )
    seen_all = sequences if seen is None else [np.asarray(s, dtype=np.int64) for s in seen]
    mask = domains_mask(catalog, seen_all) if allowed is None else allowed
    return _Source(catalog, sequences, seen_all, np.arange(len(sequences)), mask)


def domains_mask(catalog: ItemCatalog, sequences: Sequence[np.ndarray]) -> np.ndarray | None:
    """Items of the domains the sequences touch; None when that is every item.

    A split of one domain of a multi-domain dataset (``leave_one_out(data, domain=...)``)
    keeps the full catalog: its negatives must still come from its own domain, never from
    the other one, where the user's held-out target-domain items live.
    """
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if len(sequences) else []
    present = set(np.unique(catalog.domains[np.unique(items)]).tolist()) if len(items) else set()
    if not present or present >= set(np.unique(catalog.domains).tolist()):
        return None
    return np.isin(catalog.domains, list(present))


def sample_users(
    split: LeaveOneOutSplit | CrossDomainSplit | Sequence[np.ndarray], n: int, seed: int = 0
) -> np.ndarray:
    """A seeded choice of ``n`` trainable users (at least 2 training items), sorted.

    For few-shot tuning: ``build_examples(..., users=sample_users(split, 64, seed))``.
    """
    if n < 1:
        raise ConfigError("must be >= 1", parameter="n", value=n)
    if isinstance(split, LeaveOneOutSplit):
        seqs: Sequence[np.ndarray] = split.train
    elif isinstance(split, CrossDomainSplit):
        seqs = split.source_seqs
    else:
        seqs = split
    eligible = np.flatnonzero([len(s) >= 2 for s in seqs])
    if n >= len(eligible):
        return eligible
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=n, replace=False))


def _targets(sequences: list[np.ndarray], users: np.ndarray, windows: int) -> list[tuple[int, int]]:
    """(user, target position) pairs: the last ``windows`` positions that have a history."""
    out = []
    for u in users.tolist():
        n = len(sequences[u])
        for pos in range(n - 1, max(0, n - windows) - 1, -1):
            if pos >= 1:
                out.append((u, pos))
    return out


def _hard_negatives(
    retriever: CandidateGenerator | None,
    histories: list[History],
    k: int,
    allowed: np.ndarray | None,
    batch_size: int = 256,
) -> np.ndarray:
    """Retriever top-``k`` per history (-1 padding); all -1 without a retriever or ``k == 0``."""
    if retriever is None or k == 0:
        return np.full((len(histories), max(k, 1)), -1, dtype=np.int64)
    rows = []
    for lo in tqdm(range(0, len(histories), batch_size), desc="hard negatives", leave=False):
        rows.append(retriever.candidates(histories[lo : lo + batch_size], k=k, allowed=allowed).items)
    return np.vstack(rows)


def _random_negatives(
    rng: np.random.Generator, pool: np.ndarray, banned: set[int], n: int, user: int
) -> list[int]:
    """``n`` distinct items of ``pool`` not in ``banned`` (rejection sampling, then a scan)."""
    out: list[int] = []
    for _ in range(50 * n + 100):
        if len(out) == n:
            return out
        item = int(pool[rng.integers(len(pool))])
        if item not in banned:
            banned.add(item)
            out.append(item)
    rest = [int(i) for i in rng.permutation(pool) if int(i) not in banned]
    if len(out) + len(rest) < n:
        raise ConfigError(
            f"user {user} has too few items left for {n} more random negatives",
            parameter="num_candidates",
            value=n,
        )
    return out + rest[: n - len(out)]


def _shuffled_candidates(
    rng: np.random.Generator,
    target: int,
    hard_row: np.ndarray,
    banned: set[int],
    pool: np.ndarray,
    n_hard: int,
    n_neg: int,
    user: int,
) -> np.ndarray:
    """Target + ``n_hard`` retrieved + random negatives, in a seeded random order."""
    negatives: list[int] = []
    for item in hard_row.tolist():
        if len(negatives) == n_hard:
            break
        if item >= 0 and item not in banned:
            banned.add(item)
            negatives.append(item)
    negatives += _random_negatives(rng, pool, banned, n_neg - len(negatives), user)
    return np.array([target, *negatives], dtype=np.int64)[rng.permutation(n_neg + 1)]


def _evidence(
    retriever: CandidateGenerator | None,
    kept: list[tuple[int, int, History, np.ndarray]],
    batch_size: int = 256,
) -> list:
    """The retriever's evidence for each example's candidates (see :mod:`llmrec.candidates.evidence`)."""
    from llmrec.candidates.evidence import candidate_evidence

    assert retriever is not None
    out: list = []
    for lo in tqdm(range(0, len(kept), batch_size), desc="evidence", leave=False):
        chunk = kept[lo : lo + batch_size]
        width = max(len(c) for *_, c in chunk)
        items = np.full((len(chunk), width), -1, dtype=np.int64)
        for r, (*_, cands) in enumerate(chunk):
            items[r, : len(cands)] = cands
        out += candidate_evidence(retriever, [h for _, _, h, _ in chunk], items)
    return out


def build_examples(
    source: LeaveOneOutSplit | CrossDomainSplit | Sequence[np.ndarray],
    catalog: ItemCatalog | None,
    retriever: CandidateGenerator | None,
    renderer: PromptRenderer,
    *,
    num_candidates: int = 20,
    hard_fraction: float = 0.5,
    windows: int = 1,
    users: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
    seen: Sequence[np.ndarray] | None = None,
    allowed: np.ndarray | None = None,
    candidate_order: str = "shuffled",
    progress: bool = True,
) -> Dataset:
    """Prompt/completion examples for supervised tuning of the listwise reranker.

    Parameters
    ----------
    source:
        A :class:`LeaveOneOutSplit` (targets from ``train``; validation and test items are
        excluded everywhere), a :class:`CrossDomainSplit` (source-domain sequences; negatives
        from the source domain), or raw per-user sequences (oldest first) with ``catalog``.
    catalog:
        Needed for raw sequences; ``None`` takes the split's catalog.
    retriever:
        A fitted generator for hard negatives (``None`` = random negatives only, then
        ``hard_fraction`` must be 0).
    renderer:
        Renders the template for the tokenizer of the model to tune (chat format, budget).
    num_candidates:
        Target + ``num_candidates - 1`` negatives; at most the template's number of labels.
    hard_fraction:
        Share of the negatives taken from the retriever's top list (in its order), the rest
        random. Too few retrieved items are filled with random ones.
    windows:
        Targets per user: the last ``windows`` training positions (each with at least one
        history item).
    users:
        Only these user indices (e.g. :func:`sample_users` for few-shot tuning).
    seed:
        Everything random is seeded per example from ``(seed, user, position)``.
    seen:
        Raw sequences only: every item each user interacted with (default: the sequence).
    allowed:
        Boolean item mask of possible candidates. Default: the items of the domain(s) the
        sequences come from (all items for single-domain data; the source domain for a
        :class:`CrossDomainSplit`).
    candidate_order:
        ``"shuffled"`` (target + negatives in a seeded random order) or ``"retriever"``
        (the retriever's own top list in its order, examples whose target it misses are
        dropped; needs ``hard_fraction=1``).

    Returns a :class:`datasets.Dataset` with the columns in :data:`COLUMNS`, ordered by user
    then position (latest first).
    """
    labels = renderer.template.labels
    if renderer.template.task != "listwise":
        raise ConfigError(
            "training examples need a listwise template", parameter="template", value=renderer.template.name
        )
    if not 2 <= num_candidates <= len(labels):
        raise ConfigError(
            f"must be in [2, {len(labels)}] (the template's labels)",
            parameter="num_candidates",
            value=num_candidates,
        )
    if not 0.0 <= hard_fraction <= 1.0:
        raise ConfigError("must be in [0, 1]", parameter="hard_fraction", value=hard_fraction)
    if hard_fraction > 0 and retriever is None:
        raise ConfigError(
            "hard negatives need a fitted retriever; pass one or set hard_fraction=0",
            parameter="hard_fraction",
            value=hard_fraction,
        )
    if windows < 1:
        raise ConfigError("must be >= 1", parameter="windows", value=windows)
    if renderer.template.evidence and retriever is None:
        raise ConfigError(
            f"template {renderer.template.name!r} shows the retriever's evidence; pass a fitted retriever",
            parameter="retriever",
            value=None,
        )
    if candidate_order not in CANDIDATE_ORDERS:
        raise ConfigError(
            f"must be one of {', '.join(CANDIDATE_ORDERS)}",
            parameter="candidate_order",
            value=candidate_order,
        )
    in_retriever_order = candidate_order == "retriever"
    if in_retriever_order and hard_fraction != 1.0:
        raise ConfigError(
            "candidate_order 'retriever' takes every candidate from the retriever; set hard_fraction to 1",
            parameter="hard_fraction",
            value=hard_fraction,
        )
    src = _resolve_source(source, catalog, seen, allowed)
    n_users = len(src.sequences)
    users_arr = np.arange(n_users) if users is None else np.unique(np.asarray(users, dtype=np.int64))
    if len(users_arr) and (users_arr.min() < 0 or users_arr.max() >= n_users):
        raise ConfigError(f"user indices must be in [0, {n_users})", parameter="users", value=users_arr.max())
    pool = np.arange(len(src.catalog)) if src.allowed is None else np.flatnonzero(src.allowed)

    pairs = _targets(src.sequences, users_arr, windows)
    n_neg = num_candidates - 1
    n_hard = int(round(hard_fraction * n_neg))
    histories = [History(items=src.sequences[u][:pos]) for u, pos in pairs]
    # Retrieve a few extra: other items of the user (later train items, validation, test)
    # are dropped below.
    if in_retriever_order:
        depth = num_candidates + windows + 2
    elif n_hard:
        depth = n_hard + min(n_neg, 20)
    else:
        depth = 0
    retrieved = _hard_negatives(retriever, histories, depth, src.allowed)
    dropped = 0

    kept: list[tuple[int, int, History, np.ndarray]] = []
    for (u, pos), hist, hard_row in tqdm(
        zip(pairs, histories, retrieved), total=len(pairs), desc="examples", disable=not progress
    ):
        rng = np.random.default_rng([seed, u, pos])
        target = int(src.sequences[u][pos])
        banned = {int(i) for i in src.seen[u]} | {target}
        if in_retriever_order:
            # The user's other items (later train, validation, test) are not candidates.
            row = [i for i in hard_row.tolist() if i >= 0 and (i == target or i not in banned)]
            if target not in row[:num_candidates]:
                dropped += 1
                continue
            cands = np.array(row[:num_candidates], dtype=np.int64)
        else:
            cands = _shuffled_candidates(rng, target, hard_row, banned, pool, n_hard, n_neg, u)
        kept.append((u, pos, hist, cands))
    evidence = _evidence(retriever, kept) if renderer.template.evidence else [None] * len(kept)

    rows: dict[str, list] = {c: [] for c in COLUMNS}
    titles = src.catalog.titles
    for (u, pos, hist, cands), ev in zip(kept, evidence):
        target = int(src.sequences[u][pos])
        label = labels[int(np.flatnonzero(cands == target)[0])]
        prompt = renderer.render([titles[i] for i in hist.items], [titles[i] for i in cands], ev)
        rows["prompt"].append(prompt)
        rows["completion"].append(label)
        rows["user"].append(u)
        rows["user_id"].append(str(src.user_ids[u]))
        rows["target_item"].append(target)
        rows["position"].append(pos)
        rows["history_items"].append(hist.items.tolist())
        rows["candidate_items"].append(cands.tolist())
    logger.info(
        "built %d examples from %d users (%d candidates, %d hard, windows=%d, order=%s, seed=%d)",
        len(rows["prompt"]),
        len(users_arr),
        num_candidates,
        n_hard,
        windows,
        candidate_order,
        seed,
    )
    if dropped:
        logger.info(
            "%d of %d targets not in the retriever's top-%d: no example", dropped, len(pairs), num_candidates
        )
    return Dataset.from_dict(rows)
