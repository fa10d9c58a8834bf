"""Cross-domain collaborative links: a user's items in other domains predict each domain's items.

For every domain ``d`` a ridge regression (an EASE block, Steck 2019, restricted to the
off-diagonal domain blocks) is fit on the users active both in ``d`` and elsewhere::

    W_d = argmin ||X_d - X_other W||^2 + l2 ||W||^2 = (X_other^T X_other + l2 I)^-1 X_other^T X_d

so an office item is scored only from the user's arts items (and vice versa). This is the link
a cold-start user needs: their target-domain history is empty, and within-domain weights,
which dominate a full EASE or item-kNN, give them nothing. Only users whose items in both
blocks are in the training data teach it; a cold-start user's hidden target history never is.

Each target item keeps its ``neighbors`` largest weights, so the model is a sparse
items x items matrix whatever the catalog size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.candidates.itemknn import history_matrix
from llmrec.data.catalog import History
from llmrec.errors import ConfigError


class CrossDomainEASEGenerator(CandidateGenerator):
    """Ridge regression from each user's items outside a domain to that domain's items.

    Parameters
    ----------
    l2:
        Ridge penalty on the source -> target weights.
    recency_decay:
        In (0, 1]; history item weight ``recency_decay ** age`` at scoring time (1 = binary).
    neighbors:
        Weights kept per target item (the largest).
    max_items:
        Largest source block ``fit`` accepts (a dense ``n x n`` Gram matrix is inverted).
    """

    name = "cross-ease"
    saved_arrays = ("weights",)

    def __init__(
        self, l2: float = 500.0, recency_decay: float = 0.9, neighbors: int = 200, max_items: int = 20_000
    ) -> None:
        super().__init__()
        if l2 <= 0:
            raise ConfigError("must be > 0", parameter="l2", value=l2)
        if not 0.0 < recency_decay <= 1.0:
            raise ConfigError("must be in (0, 1]", parameter="recency_decay", value=recency_decay)
        if neighbors < 1:
            raise ConfigError("must be >= 1", parameter="neighbors", value=neighbors)
        self.l2 = l2
        self.recency_decay = recency_decay
        self.neighbors = neighbors
        self.max_items = max_items
        self.weights: sp.csr_matrix | None = None
        """items x items: weight of a history item (row) for a candidate of another domain (column)."""

    def _fit(self, train: TrainData) -> None:
        x = train.matrix().astype(np.float64).tocsr()
        domains = np.asarray(train.catalog.domains)
        n = x.shape[1]
        if len(set(domains.tolist())) < 2:
            raise ConfigError(
                "needs a catalog of at least two domains (items' `domain` field); this one has "
                f"{sorted(set(domains.tolist()))}: use ease or itemknn within one domain",
                parameter="generator",
                value=self.name,
            )
        rows, cols, vals = [], [], []
        for domain in sorted(set(domains.tolist())):
            target = domains == domain
            xt, xs = x[:, target], x[:, ~target]
            users = np.flatnonzero((xt.getnnz(axis=1) > 0) & (xs.getnnz(axis=1) > 0))
            if not len(users):
                continue
            xt, xs = xt[users], xs[users]
            src = np.flatnonzero(xs.getnnz(axis=0) > 0)  # source items these users touched
            tgt = np.flatnonzero(xt.getnnz(axis=0) > 0)
            if len(src) > self.max_items:
                raise ConfigError(
                    f"the {len(src)} items outside domain {domain!r} need a dense {len(src)}^2 inverse; "
                    f"raise max_items if memory allows (~{8 * len(src) ** 2 / 1e9:.1f} GB)",
                    parameter="max_items",
                    value=self.max_items,
                )
            xs, xt = xs[:, src], xt[:, tgt]
            gram = (xs.T @ xs).toarray()
            gram[np.diag_indices(len(src))] += self.l2
            w = scipy.linalg.solve(gram, (xs.T @ xt).toarray(), assume_a="pos", check_finite=False)
            k = min(self.neighbors, len(src))
            keep = np.argpartition(-w, k - 1, axis=0)[:k]  # per target column, the k largest
            src_items = np.flatnonzero(~target)[src]
            tgt_items = np.flatnonzero(target)[tgt]
            rows.append(src_items[keep].ravel())
            cols.append(np.broadcast_to(tgt_items, keep.shape).ravel())
            vals.append(np.take_along_axis(w, keep, axis=0).ravel())
        if rows:
            weights = sp.coo_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
            )
        else:
            weights = sp.coo_matrix((n, n))
        self.weights = weights.tocsr().astype(np.float32)
        self.weights.eliminate_zeros()

    def score(self, histories: Sequence[History]) -> np.ndarray:
        self._check_fitted()
        assert self.weights is not None
        h = history_matrix(histories, len(self.catalog), self.recency_decay).astype(np.float32)
        return np.asarray((h @ self.weights).toarray(), dtype=np.float32)
