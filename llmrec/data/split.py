"""Leave-one-out splits by time (or step), and cross-domain views.

Each user's interactions are ordered by timestamp (or step); the last one is
the test item, the second-to-last the validation item, the rest is training
history. Ranking for the test stage uses train + validation as history; ranking
for the validation stage uses train only. Users with fewer than 3 interactions
keep everything in train and are not evaluated (their count is logged).

Interactions with the same timestamp are ordered by ``order`` (:data:`SPLIT_ORDERS`):

- ``"time+id"`` (default): by item id, compared as numbers when every item id of the
  catalog is an integer (``"98"`` before ``"1000"``, as a numeric sort of MovieLens
  ``u.data`` / ``ratings.csv`` gives, and published splits use), else as text;
- ``"time+text"``: by item id compared as text (``"1000"`` before ``"98"``): the order of
  llmrec before 0.2, which the README's LLM-stage rows on ml-latest-small were measured with;
- ``"file"``: in the order the rows appear in the source file (a stable sort).

``"time+id"`` holds out another item than ``"time+text"`` for the users whose last two
interactions share a second (about 15% of ml-100k users, 50 of 610 in ml-latest-small).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from llmrec.data.catalog import History, ItemCatalog
from llmrec.data.schema import RecDataset
from llmrec.errors import ConfigError

logger = logging.getLogger(__name__)

Stage = Literal["valid", "test"]
SplitOrder = Literal["time+id", "time+text", "file"]
SPLIT_ORDERS: tuple[str, ...] = ("time+id", "time+text", "file")
"""How same-timestamp interactions are ordered (see the module doc)."""
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class LeaveOneOutSplit:
    """Per-user sequences split into train / validation item / test item.

    ``valid[u]`` and ``test[u]`` are item indices, or -1 for users not evaluated.
    ``train[u]`` is an int64 array of item indices, oldest first.
    """

    catalog: ItemCatalog
    user_ids: np.ndarray
    train: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray
    log: list[str] = field(default_factory=list)
    hidden: np.ndarray | None = None
    """Boolean per item, or None: items whose every interaction is hidden from histories and
    from what generators fit on (new items, :meth:`hide_items`); they stay held-out items."""

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def history_items(self, stage: Stage, user: int) -> np.ndarray:
        """Items known before the held-out item of ``stage`` (train, + valid for test), hidden
        items left out."""
        items = self.train[user]
        if stage == "test" and self.valid[user] >= 0:
            items = np.append(items, self.valid[user])
        if self.hidden is not None:
            items = items[~self.hidden[items]]
        return items

    def hide_items(self, hidden: np.ndarray) -> LeaveOneOutSplit:
        """The same split with the items of the boolean mask ``hidden`` treated as new: no
        history shows them and no generator is fit on them, but they are still held out, so
        the users whose validation or test item is one of them measure new-item ranking."""
        hidden = np.asarray(hidden, dtype=bool)
        if hidden.shape != (len(self.catalog),):
            raise ValueError(f"hidden must be one boolean per item ({len(self.catalog)}), got {hidden.shape}")
        n_users = int(np.isin(self.test, np.flatnonzero(hidden)).sum())
        line = (
            f"new items: {int(hidden.sum())} items hidden from every history and fit; "
            f"{n_users} users' test items among them"
        )
        logger.info(line)
        return dataclasses.replace(self, hidden=hidden, log=[*self.log, line])

    def target(self, stage: Stage) -> np.ndarray:
        """Held-out item per user for ``stage`` (-1 where none)."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        return self.valid if stage == "valid" else self.test

    def eval_users(self, stage: Stage) -> np.ndarray:
        """Indices of users that have a held-out item for ``stage``."""
        return np.flatnonzero(self.target(stage) >= 0)

    def histories(self, stage: Stage, users: np.ndarray | None = None) -> list[History]:
        """:class:`History` objects for ``users`` (default: all users)."""
        users = np.arange(self.n_users) if users is None else users
        return [History(items=self.history_items(stage, int(u))) for u in users]

    def sequences(self, stage: Stage) -> list[np.ndarray]:
        """Every user's known sequence for ``stage``: what a generator may be fit on."""
        return [self.history_items(stage, u) for u in range(self.n_users)]

    def full_sequences(self) -> list[np.ndarray]:
        """Every user's whole sequence: train, then the validation and test items."""
        return [
            np.append(self.train[u], [self.valid[u], self.test[u]]) if self.test[u] >= 0 else self.train[u]
            for u in range(self.n_users)
        ]

    def shifted(self, window: int) -> LeaveOneOutSplit:
        """The split of the same sequences with each user's last ``window`` interactions removed.

        Its validation and test items are the ones ``window`` steps before this split's: the
        extra training windows of a model fit on validation (a combiner), which never see this
        split's validation or test items. ``shifted(0)`` is this split.
        """
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        if window == 0:
            return self
        seqs = [s[: max(len(s) - window, 0)] for s in self.full_sequences()]
        shifted = _split_sequences(self.catalog, self.user_ids, seqs)
        return shifted if self.hidden is None else shifted.hide_items(self.hidden)


def leave_one_out(
    data: RecDataset, domain: str | None = None, order: SplitOrder = "time+id"
) -> LeaveOneOutSplit:
    """Leave-one-out split of ``data`` (optionally of one domain's interactions only).

    ``order`` breaks timestamp ties (see the module doc).
    """
    catalog = ItemCatalog.from_dataset(data)
    users, seqs = user_sequences(data, catalog, domain=domain, order=order)
    return _split_sequences(catalog, users, seqs)


def items_first_seen_late(data: RecDataset, catalog: ItemCatalog, fraction: float) -> np.ndarray:
    """Boolean per catalog item: its first interaction lies in the last ``fraction`` of all
    interactions by time (the catalog's newest items, as a live system meets them).

    Needs real timestamps: with per-user steps (``order_by == "step"``) "late" has no meaning
    across users, so that is refused.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError("must be in (0, 1)", parameter="new_items_fraction", value=fraction)
    if data.order_by != "timestamp":
        raise ConfigError(
            f"needs timestamps, but {data.name} orders interactions by {data.order_by!r}",
            parameter="new_items_fraction",
            value=fraction,
        )
    table = data.interactions.select_columns(["item_id", "timestamp"]).to_pandas()
    cutoff = np.quantile(table["timestamp"].to_numpy(dtype=np.float64), 1.0 - fraction)
    first = table.groupby("item_id", sort=False)["timestamp"].min()
    known = set(catalog.item_ids.tolist())
    late = [i for i in first[first.to_numpy(dtype=np.float64) > cutoff].index.tolist() if i in known]
    mask = np.zeros(len(catalog), dtype=bool)
    if late:
        mask[catalog.index_of(late)] = True
    return mask


def sampled_new_items(catalog: ItemCatalog, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean per catalog item: a seeded uniform sample of ``round(fraction * n_items)`` of
    the catalog's items, to be treated as new (:meth:`LeaveOneOutSplit.hide_items`).

    The variant of :func:`items_first_seen_late` for data without timestamps (per-user steps
    say nothing about when an item entered the catalog). The catalog holds only items with
    interactions, so every sampled item takes interactions out of histories and fits; each
    item is equally likely, whatever its popularity, so about ``fraction`` of the held-out
    items fall on new items (more or less as a few popular items are drawn or not). Draws
    from ``np.random.default_rng(seed)`` over the catalog's order (sorted item ids): the same
    data, fraction and seed give the same items.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError("must be in (0, 1)", parameter="new_items_sample", value=fraction)
    n = int(round(fraction * len(catalog)))
    mask = np.zeros(len(catalog), dtype=bool)
    mask[np.random.default_rng(seed).choice(len(catalog), size=n, replace=False)] = True
    return mask


def item_id_rank(item_ids: np.ndarray, numeric: bool = True) -> np.ndarray:
    """Rank of each item id: numeric order when ``numeric`` and every id is an integer, else text order."""
    ids = [str(i) for i in item_ids.tolist()]
    if numeric and ids and all(_INTEGER.fullmatch(i) for i in ids):
        order = sorted(range(len(ids)), key=lambda i: (int(ids[i]), ids[i]))
    else:
        order = sorted(range(len(ids)), key=ids.__getitem__)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def user_sequences(
    data: RecDataset, catalog: ItemCatalog, domain: str | None = None, order: SplitOrder = "time+id"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted user ids and each user's item indices ordered by timestamp, ties broken by ``order``."""
    if order not in SPLIT_ORDERS:
        raise ConfigError(f"must be one of {SPLIT_ORDERS}", parameter="order", value=order)
    table = data.interactions.select_columns(["user_id", "item_id", "timestamp", "domain"]).to_pandas()
    if domain is not None:
        table = table[table["domain"] == domain]
    table["item"] = catalog.index_of(table["item_id"].tolist())
    keys = ["user_id", "timestamp"]
    if order != "file":
        rank = item_id_rank(catalog.item_ids, numeric=order == "time+id")
        table["tie"] = rank[table["item"].to_numpy(dtype=np.int64)]
        keys.append("tie")
    table = table.sort_values(keys, kind="stable")
    users, starts = np.unique(table["user_id"].to_numpy(dtype=object), return_index=True)
    items = table["item"].to_numpy(dtype=np.int64)
    bounds = list(starts) + [len(items)]
    seqs = [items[bounds[i] : bounds[i + 1]] for i in range(len(users))]
    return users, seqs


def _split_sequences(catalog: ItemCatalog, users: np.ndarray, seqs: list[np.ndarray]) -> LeaveOneOutSplit:
    n = len(users)
    valid = np.full(n, -1, dtype=np.int64)
    test = np.full(n, -1, dtype=np.int64)
    train: list[np.ndarray] = []
    short = 0
    for u, seq in enumerate(seqs):
        if len(seq) < 3:
            short += 1
            train.append(seq)
            continue
        train.append(seq[:-2])
        valid[u] = seq[-2]
        test[u] = seq[-1]
    log = [
        f"leave-one-out: {n} users, {n - short} evaluated, {short} with < 3 interactions kept in train only"
    ]
    for line in log:
        logger.info(line)
    return LeaveOneOutSplit(catalog=catalog, user_ids=users, train=train, valid=valid, test=test, log=log)


def interaction_matrix(sequences: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary users x items CSR matrix of the given sequences."""
    indptr = np.zeros(len(sequences) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(s) for s in sequences])
    indices = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
    data = np.ones(len(indices), dtype=np.float32)
    mat = sp.csr_matrix((data, indices, indptr), shape=(len(sequences), n_items))
    mat.sum_duplicates()
    mat.data[:] = 1.0
    return mat


@dataclass
class CrossDomainSplit:
    """Source -> target view of a multi-domain dataset.

    The target domain is split leave-one-out per user. A seeded ``cold_fraction``
    of the evaluated target users is *cold*: their target history is hidden, so
    the generators are fit without any of their target interactions and they are
    ranked from their source history alone. The other users are *warm*.
    """

    source: str
    target: str
    catalog: ItemCatalog
    user_ids: np.ndarray
    source_seqs: list[np.ndarray]
    target_split: LeaveOneOutSplit
    cold: np.ndarray
    """Boolean per user: target history hidden."""
    log: list[str] = field(default_factory=list)

    def users(self, group: Literal["warm", "cold"], stage: Stage = "test") -> np.ndarray:
        """Evaluated users of a group for ``stage``."""
        evaluated = self.target_split.target(stage) >= 0
        mask = self.cold if group == "cold" else ~self.cold
        return np.flatnonzero(evaluated & mask)

    def histories(self, group: Literal["warm", "cold"], stage: Stage, users: np.ndarray) -> list[History]:
        """Warm: target history. Cold: source history only."""
        if group == "warm":
            return self.target_split.histories(stage, users)
        return [History(items=self.source_seqs[int(u)]) for u in users]

    def fit_sequences(self, stage: Stage) -> list[np.ndarray]:
        """What generators may learn from: every user's source history, plus target
        history (train, + valid at test) of warm users only. Never a held-out item."""
        out = []
        for u in range(len(self.user_ids)):
            target_hist = (
                np.zeros(0, dtype=np.int64) if self.cold[u] else self.target_split.history_items(stage, u)
            )
            out.append(np.concatenate([self.source_seqs[u], target_hist]))
        return out


def cross_domain_split(
    data: RecDataset,
    source: str,
    target: str,
    cold_fraction: float = 0.2,
    seed: int = 0,
    order: SplitOrder = "time+id",
) -> CrossDomainSplit:
    """Build the source -> target view (see :class:`CrossDomainSplit`); ``order`` breaks timestamp ties."""
    doms = data.domains
    for name, dom in (("source", source), ("target", target)):
        if dom not in doms:
            raise ConfigError(
                f"not a domain of {data.name}; domains present: {doms}", parameter=name, value=dom
            )
    if source == target:
        raise ConfigError("source and target must be different domains", parameter="target", value=target)
    if not 0.0 <= cold_fraction < 1.0:
        raise ConfigError("must be in [0, 1)", parameter="cold_fraction", value=cold_fraction)
    catalog = ItemCatalog.from_dataset(data)
    t_users, t_seqs = user_sequences(data, catalog, domain=target, order=order)
    s_users, s_seqs = user_sequences(data, catalog, domain=source, order=order)
    src = dict(zip(s_users.tolist(), s_seqs))
    empty = np.zeros(0, dtype=np.int64)
    source_seqs = [src.get(u, empty) for u in t_users.tolist()]
    target_split = _split_sequences(catalog, t_users, t_seqs)
    rng = np.random.default_rng(seed)
    # Only users with a source history can be cold-start users: that is what they are ranked from.
    eligible = np.flatnonzero((target_split.test >= 0) & np.array([len(s) > 0 for s in source_seqs]))
    n_cold = int(round(cold_fraction * len(eligible)))
    cold = np.zeros(len(t_users), dtype=bool)
    cold[rng.choice(eligible, size=n_cold, replace=False)] = True
    log = target_split.log + [
        f"cross-domain {source} -> {target}: {len(t_users)} target users, "
        f"{int(cold.sum())} cold (target history hidden, seed {seed}), "
        f"{len(s_users) - len(set(s_users.tolist()) & set(t_users.tolist()))} source-only users not evaluated"
    ]
    for line in log[-1:]:
        logger.info(line)
    return CrossDomainSplit(
        source=source,
        target=target,
        catalog=catalog,
        user_ids=t_users,
        source_seqs=source_seqs,
        target_split=target_split,
        cold=cold,
        log=log,
    )
