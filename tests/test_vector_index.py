"""The vector index behind the embedding generator's top-k: FAISS flat / HNSW against exact."""

import numpy as np
import pytest

from llmrec.candidates.vector_index import VectorIndex, faiss_available
from llmrec.errors import ConfigError, LlmrecWarning


def _unit(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_is_the_brute_force_top_k():
    rng = np.random.default_rng(0)
    items, queries = _unit(rng, 500), _unit(rng, 20)
    scores, found = VectorIndex(items).search(queries, 10)
    truth = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    np.testing.assert_array_equal(found, truth)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed")
def test_faiss_flat_is_exact_and_hnsw_nearly():
    rng = np.random.default_rng(1)
    items, queries = _unit(rng, 5000), _unit(rng, 200)
    _, truth = VectorIndex(items).search(queries, 20)
    _, flat = VectorIndex(items, "flat").search(queries, 20)
    np.testing.assert_array_equal(np.sort(flat, axis=1), np.sort(truth, axis=1))
    _, hnsw = VectorIndex(items, "hnsw").search(queries, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(hnsw, truth)])
    assert recall >= 0.95, recall
    _, again = VectorIndex(items, "hnsw").search(queries, 20)
    np.testing.assert_array_equal(again, hnsw)  # the graph is built the same way every time


@pytest.mark.parametrize("kind", ["exact", "flat", "hnsw"])
def test_allowed_mask_and_padding(kind):
    if kind != "exact" and not faiss_available():
        pytest.skip("faiss-cpu not installed")
    rng = np.random.default_rng(2)
    items, queries = _unit(rng, 300), _unit(rng, 5)
    allowed = np.zeros(300, dtype=bool)
    allowed[::50] = True  # 6 items
    scores, found = VectorIndex(items, kind).search(queries, 10, allowed)
    assert found.shape == (5, 6)  # never more than the eligible items
    assert allowed[found].all()
    assert np.isfinite(scores).all()


def test_unknown_kind_and_missing_faiss(monkeypatch):
    with pytest.raises(ConfigError, match="index"):
        VectorIndex(np.eye(3, dtype=np.float32), "annoy")
    monkeypatch.setattr("llmrec.candidates.vector_index.faiss_available", lambda: False)
    with pytest.warns(LlmrecWarning, match="faiss"):
        index = VectorIndex(np.eye(3, dtype=np.float32), "hnsw")
    assert index.kind == "exact"
    _, found = index.search(np.eye(3, dtype=np.float32)[:1], 1)
    assert found.tolist() == [[0]]
