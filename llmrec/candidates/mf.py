"""Matrix factorization (implicit ALS, optionally BPR) with user factors folded in from histories."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.candidates.itemknn import history_matrix
from llmrec.data.catalog import History
from llmrec.errors import ConfigError

MODELS = ("als", "bpr")
PROGRESS_MIN_INTERACTIONS = 500_000
"""Fits on at least this many interactions show implicit's progress bar."""


class MFGenerator(CandidateGenerator):
    """Implicit-feedback matrix factorization via the ``implicit`` package (CPU, one thread).

    Only item factors are kept from training. For every history, the user factor is
    solved from that history's items (the exact ALS least-squares step, as implicit's
    ``recalculate_user``), so users unseen in training and cross-domain histories work.
    ``model="bpr"`` trains BPR item factors (plus implicit's item-bias column) and folds
    users in with the same least-squares step: an approximation, BPR has no closed form.

    Parameters
    ----------
    factors, regularization, alpha, iterations:
        implicit's hyper-parameters; confidence of a history item = ``alpha * weight``.
    model:
        ``"als"`` (default) or ``"bpr"``.
    learning_rate:
        BPR only.
    recency_decay:
        In (0, 1]; history item weight ``recency_decay ** age`` when folding in (1 = binary).
    seed:
        ``random_state`` of the factor initialisation.
    """

    name = "mf"
    saved_arrays = ("item_factors",)
    """The implicit estimator is not saved: scoring folds users in from ``item_factors`` alone."""

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 10.0,
        alpha: float = 5.0,
        iterations: int = 15,
        model: str = "als",
        learning_rate: float = 0.01,
        recency_decay: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if model not in MODELS:
            raise ConfigError(f"must be one of {MODELS}", parameter="model", value=model)
        if factors < 1:
            raise ConfigError("must be >= 1", parameter="factors", value=factors)
        if iterations < 1:
            raise ConfigError("must be >= 1", parameter="iterations", value=iterations)
        if regularization < 0:
            raise ConfigError("must be >= 0", parameter="regularization", value=regularization)
        if alpha <= 0:
            raise ConfigError("must be > 0", parameter="alpha", value=alpha)
        if not 0.0 < recency_decay <= 1.0:
            raise ConfigError("must be in (0, 1]", parameter="recency_decay", value=recency_decay)
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.model = model
        self.learning_rate = learning_rate
        self.recency_decay = recency_decay
        self.seed = seed
        self.item_factors: np.ndarray | None = None
        """items x factors float32 (BPR: one more column, the item bias)."""
        self.estimator = None
        """The fitted implicit model (its user factors cover training users only)."""

    def _fit(self, train: TrainData) -> None:
        cpu = _import_implicit()
        x = train.matrix().astype(np.float32)
        if self.model == "als":
            est = cpu.als.AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=1,  # one thread: bit-identical factors run to run
            )
        else:
            est = cpu.bpr.BayesianPersonalizedRanking(
                factors=self.factors,
                learning_rate=self.learning_rate,
                regularization=self.regularization,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=1,
            )
        est.fit(x, show_progress=x.nnz >= PROGRESS_MIN_INTERACTIONS)  # implicit's bar, with an ETA
        self.estimator = est
        self.item_factors = np.ascontiguousarray(est.item_factors, dtype=np.float32)

    def user_factors(self, histories: Sequence[History]) -> np.ndarray:
        """Least-squares user factors for each history (zeros for histories without items)."""
        self._check_fitted()
        h = history_matrix(histories, len(self.catalog), self.recency_decay)
        return fold_in(self.item_factors, h, self.regularization, self.alpha)

    def score(self, histories: Sequence[History]) -> np.ndarray:
        return np.asarray(self.user_factors(histories) @ self.item_factors.T, dtype=np.float32)


def fold_in(
    item_factors: np.ndarray, user_items: sp.csr_matrix, regularization: float, alpha: float
) -> np.ndarray:
    """Implicit-ALS user step: ``x_u = (Y^T C_u Y + reg I)^-1 Y^T C_u p_u``.

    Same system as implicit's ``recalculate_user``: confidence ``alpha * r`` on the
    observed items (preference 1), 1 on every other item (preference 0). Solved in
    float64 per user; users without items get zeros.
    """
    y = item_factors.astype(np.float64)
    f = y.shape[1]
    base = y.T @ y + regularization * np.eye(f)
    out = np.zeros((user_items.shape[0], f), dtype=np.float32)
    user_items = user_items.tocsr()
    for u in range(user_items.shape[0]):
        lo, hi = user_items.indptr[u], user_items.indptr[u + 1]
        if lo == hi:
            continue
        yi = y[user_items.indices[lo:hi]]
        conf = alpha * user_items.data[lo:hi]
        a = base + (yi * (conf - 1.0)[:, None]).T @ yi
        out[u] = np.linalg.solve(a, yi.T @ conf)
    return out


def _import_implicit():
    try:
        import implicit.cpu.als
        import implicit.cpu.bpr
    except ImportError as exc:
        raise ImportError("MFGenerator needs the implicit package: pip install implicit") from exc
    return implicit.cpu
