"""BM25 over item text, with the user's history (and free text) as the query.

Two backends compute the same BM25Okapi scores (``rank_bm25``'s variant):

* ``"sparse"`` (default): the items x vocabulary weight matrix is precomputed once at
  fit time; a batch of queries becomes a sparse queries x vocabulary count matrix and
  one sparse matmul scores every (query, item) pair.
* ``"rank_bm25"``: the reference, ``rank_bm25.BM25Okapi(...).get_scores(tokens)`` per
  query. Slow (pure Python per token and document); kept for parity tests and benchmarks.

BM25Okapi, as implemented by rank_bm25 0.2.x, scores document ``d`` for query tokens
``q_1..q_m`` (repeats counted each time, unknown tokens contribute 0) as::

    sum_j idf(q_j) * tf(q_j, d) * (k1 + 1) / (tf(q_j, d) + k1 * (1 - b + b * |d| / avgdl))

with ``idf(t) = log(N - n_t + 0.5) - log(n_t + 0.5)``; idfs below zero (terms in more
than half of the documents) are replaced by ``epsilon * mean(idf)``, the mean taken over
all vocabulary terms *before* that replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from llmrec.candidates.base import CandidateGenerator, TrainData
from llmrec.candidates.persistence import load_array, save_array
from llmrec.candidates.text import tokenize
from llmrec.data.catalog import History
from llmrec.errors import ConfigError

BACKENDS = ("sparse", "rank_bm25")


class BM25Generator(CandidateGenerator):
    """BM25Okapi retrieval of items by their text (``catalog.item_text``).

    Parameters
    ----------
    k1, b, epsilon:
        BM25Okapi parameters (rank_bm25 defaults).
    query_items:
        How many of the most recent history items' texts form the query (plus ``History.text``).
    backend:
        ``"sparse"`` (fast, default) or ``"rank_bm25"`` (reference; needs ``pip install rank-bm25``).
    """

    name = "bm25"
    uses_text = True
    saved_arrays = ("item_token_counts", "idf", "weights")

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        query_items: int = 20,
        backend: str = "sparse",
    ) -> None:
        super().__init__()
        if k1 < 0:
            raise ConfigError("must be >= 0", parameter="k1", value=k1)
        if not 0.0 <= b <= 1.0:
            raise ConfigError("must be in [0, 1]", parameter="b", value=b)
        if query_items < 0:
            raise ConfigError("must be >= 0 (0 = free text only)", parameter="query_items", value=query_items)
        if backend not in BACKENDS:
            raise ConfigError(f"must be one of {BACKENDS}", parameter="backend", value=backend)
        if backend == "rank_bm25":
            _import_rank_bm25()
        self.k1 = k1
        self.b = b
        self.epsilon = epsilon
        self.query_items = query_items
        self.backend = backend
        self.vocabulary: dict[str, int] | None = None
        """Token -> column of the weight matrices."""
        self.item_token_counts: sp.csr_matrix | None = None
        """items x vocabulary term counts of each item's document (queries are built from it)."""
        self.idf: np.ndarray | None = None
        """Per vocabulary term, after the epsilon floor."""
        self.weights: sp.csc_matrix | None = None
        """vocabulary x items BM25 weight of one query occurrence of a term (sparse backend)."""
        self.reference = None
        """The ``rank_bm25.BM25Okapi`` index (rank_bm25 backend)."""

    def _fit(self, train: TrainData) -> None:
        catalog = train.catalog
        docs = [tokenize(catalog.item_text(i)) for i in range(len(catalog))]
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for d, toks in enumerate(docs):
            for tok in toks:
                cols.append(vocab.setdefault(tok, len(vocab)))
                rows.append(d)
        n_docs, n_terms = len(docs), len(vocab)
        counts = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n_docs, n_terms))
        counts.sum_duplicates()
        self.vocabulary = vocab
        self.item_token_counts = counts

        # idf exactly as rank_bm25's BM25Okapi._calc_idf (float64, mean over raw idfs).
        df = np.bincount(counts.indices, minlength=n_terms).astype(np.float64)
        idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
        average_idf = idf.mean() if n_terms else 0.0
        idf[idf < 0] = self.epsilon * average_idf
        self.idf = idf

        doc_len = np.asarray(counts.sum(axis=1)).ravel()
        avgdl = doc_len.sum() / n_docs
        norm = self.k1 * (1.0 - self.b + self.b * doc_len / avgdl)
        tf = counts.tocoo()
        w = idf[tf.col] * tf.data * (self.k1 + 1.0) / (tf.data + norm[tf.row])
        self.weights = sp.csc_matrix((w, (tf.col, tf.row)), shape=(n_terms, n_docs))

        if self.backend == "rank_bm25":
            rank_bm25 = _import_rank_bm25()
            self.reference = rank_bm25.BM25Okapi(docs, k1=self.k1, b=self.b, epsilon=self.epsilon)

    def _save_state(self, folder: Path) -> None:
        super()._save_state(folder)
        # Tokens in column order (the dict's insertion order); a str array, so no pickle.
        save_array(folder / "vocabulary", np.array(list(self.vocabulary), dtype=str))

    def _load_state(self, folder: Path) -> None:
        super()._load_state(folder)
        tokens = load_array(folder / "vocabulary").tolist()
        self.vocabulary = {tok: col for col, tok in enumerate(tokens)}

    def query_tokens(self, history: History) -> list[str]:
        """Tokens of the query for one history: recent item texts, then the free text."""
        self._check_fitted()
        recent = history.items[-self.query_items :] if self.query_items else history.items[:0]
        parts = [self.catalog.item_text(int(i)) for i in recent]
        if history.text:
            parts.append(history.text)
        # Joined with spaces: \w+ tokens never span two parts, so this equals concatenating.
        return tokenize(" ".join(parts))

    def query_matrix(self, histories: Sequence[History]) -> sp.csr_matrix:
        """queries x vocabulary token counts (out-of-vocabulary tokens dropped)."""
        self._check_fitted()
        n_items = len(self.catalog)
        # Item texts: sum the precomputed per-item count rows instead of re-tokenizing.
        sel_rows, sel_cols = [], []
        text_rows, text_cols = [], []
        for r, hist in enumerate(histories):
            recent = hist.items[-self.query_items :] if self.query_items else hist.items[:0]
            sel_rows.extend([r] * len(recent))
            sel_cols.extend(int(i) for i in recent)
            if hist.text:
                for tok in tokenize(hist.text):
                    col = self.vocabulary.get(tok)
                    if col is not None:
                        text_rows.append(r)
                        text_cols.append(col)
        n = len(histories)
        select = sp.csr_matrix(
            (np.ones(len(sel_rows)), (sel_rows, sel_cols)), shape=(n, n_items), dtype=np.float64
        )
        free = sp.csr_matrix(
            (np.ones(len(text_rows)), (text_rows, text_cols)),
            shape=(n, len(self.vocabulary)),
            dtype=np.float64,
        )
        return (select @ self.item_token_counts + free).tocsr()

    def score(self, histories: Sequence[History]) -> np.ndarray:
        self._check_fitted()
        if self.backend == "rank_bm25":
            return self._score_reference(histories)
        queries = self.query_matrix(histories)
        # float64 throughout (as rank_bm25), one cast at the end.
        return (queries @ self.weights).toarray().astype(np.float32)

    def _score_reference(self, histories: Sequence[History]) -> np.ndarray:
        if self.reference is None:
            rank_bm25 = _import_rank_bm25()
            docs = [tokenize(self.catalog.item_text(i)) for i in range(len(self.catalog))]
            self.reference = rank_bm25.BM25Okapi(docs, k1=self.k1, b=self.b, epsilon=self.epsilon)
        out = np.zeros((len(histories), len(self.catalog)), dtype=np.float32)
        for r, hist in enumerate(histories):
            tokens = self.query_tokens(hist)
            if tokens:
                out[r] = self.reference.get_scores(tokens)
        return out


def _import_rank_bm25():
    try:
        import rank_bm25
    except ImportError as exc:
        raise ImportError(
            'backend="rank_bm25" needs the rank_bm25 package: pip install rank-bm25 '
            '(or use backend="sparse", which gives the same scores)'
        ) from exc
    return rank_bm25
