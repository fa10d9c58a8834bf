"""Cross-domain EASE and user-kNN: source items predict target items for users with no target history."""

import numpy as np
import pytest

from llmrec.candidates import (
    CrossDomainEASEGenerator,
    CrossDomainUserKNNGenerator,
    TrainData,
    load_generator,
)
from llmrec.candidates.itemknn import history_matrix
from llmrec.data.catalog import History, ItemCatalog
from llmrec.errors import ConfigError


def _two_domains() -> TrainData:
    """Arts items 0-3, office items 4-7. Users who buy arts item 0 buy office item 5, users of
    arts item 1 buy office item 6; office item 4 is the most popular overall, bought by
    everyone else; arts items 2-3 and office item 7 carry no cross-domain signal."""
    rng = np.random.default_rng(0)
    domains = np.asarray(["arts"] * 4 + ["office"] * 4, dtype=object)
    catalog = ItemCatalog(
        item_ids=np.asarray([f"i{i}" for i in range(8)], dtype=object),
        titles=[f"item {i}" for i in range(8)],
        texts=[""] * 8,
        domains=domains,
    )
    seqs = [np.array([0, 2, 5]) for _ in range(10)] + [np.array([1, 3, 6]) for _ in range(10)]
    seqs += [np.array([rng.integers(2, 4), 4]) for _ in range(30)]
    seqs += [np.array([4, 7]) for _ in range(5)]  # office-only users teach no cross link
    return TrainData(catalog, [s.astype(np.int64) for s in seqs])


def _one_domain(train: TrainData) -> TrainData:
    """The same items and users, every item in one domain."""
    catalog = ItemCatalog(
        item_ids=train.catalog.item_ids,
        titles=train.catalog.titles,
        texts=train.catalog.texts,
        domains=np.asarray(["x"] * len(train.catalog), dtype=object),
    )
    return TrainData(catalog, train.sequences)


def test_source_items_rank_the_linked_target_item_first():
    train = _two_domains()
    gen = CrossDomainEASEGenerator(l2=1.0).fit(train)
    office = train.catalog.domain_mask("office")
    cands = gen.candidates([History(items=np.array([0])), History(items=np.array([1]))], k=2, allowed=office)
    assert cands.items[:, 0].tolist() == [5, 6]  # not the popular item 4
    assert not cands.fallback.any()
    # Only cross-domain weights exist: an office history says nothing about office items.
    assert not gen.score([History(items=np.array([5]))])[0, office].any()
    assert gen.candidates([History(items=np.array([5]))], k=2, allowed=office).fallback[0]


def test_save_load_and_single_domain_error(tmp_path):
    train = _two_domains()
    gen = CrossDomainEASEGenerator(l2=1.0, neighbors=2).fit(train)
    assert (gen.weights.getnnz(axis=0) <= 2).all()  # neighbors kept per target item
    histories = [History(items=np.array([0, 2])), History(items=np.array([3]))]
    loaded = load_generator(gen.save(tmp_path / "cross"))
    np.testing.assert_array_equal(loaded.score(histories), gen.score(histories))
    one = _one_domain(train)
    with pytest.raises(ConfigError, match="at least two domains"):
        CrossDomainEASEGenerator().fit(one)
    with pytest.raises(ConfigError, match="l2"):
        CrossDomainEASEGenerator(l2=0.0)


def test_fused_cross_adds_the_links_for_cold_users_only():
    from llmrec.candidates import CrossDomainFusedGenerator, FusedGenerator

    train = _two_domains()
    office = train.catalog.domain_mask("office")
    cross = CrossDomainFusedGenerator().fit(train)
    plain = FusedGenerator().fit(train)
    assert [g.name for g in cross.generators][-2:] == ["cross-ease", "cross-userknn"]
    assert cross.weights[-2:] == [1.0, 8.0]
    cold = [History(items=np.array([0])), History(items=np.array([1]))]
    assert cross.candidates(cold, k=1, allowed=office).items[:, 0].tolist() == [5, 6]
    warm = [History(items=np.array([4])), History(items=np.array([7, 4]))]
    np.testing.assert_array_equal(
        cross.masked_scores(warm, True, office), plain.masked_scores(warm, True, office)
    )


def test_userknn_neighbours_vote_for_their_target_items():
    train = _two_domains()
    gen = CrossDomainUserKNNGenerator().fit(train)
    # Only users active in both domains are neighbours: the 5 office-only users are not.
    assert gen.profiles.shape[0] == 50
    office = train.catalog.domain_mask("office")
    cold = [History(items=np.array([0])), History(items=np.array([1]))]
    cands = gen.candidates(cold, k=2, allowed=office)
    assert cands.items[:, 0].tolist() == [5, 6]  # what arts-0 / arts-1 buyers bought, not item 4
    assert not cands.fallback.any()
    # An office history says nothing about office items (it is not outside the domain).
    assert not gen.score([History(items=np.array([5]))])[0, office].any()


@pytest.mark.parametrize(("decay", "power"), [(1.0, 1.0), (0.9, 0.5), (0.5, 2.0)])
def test_userknn_scores_match_the_formula(decay, power):
    train = _two_domains()
    gen = CrossDomainUserKNNGenerator(recency_decay=decay, similarity_power=power).fit(train)
    histories = [
        History(items=np.array([0, 2])),
        History(items=np.array([3, 1, 4])),
        History(items=np.array([7])),
    ]
    x = train.matrix().toarray().astype(np.float64)
    domains = np.asarray(train.catalog.domains)
    h = history_matrix(histories, 8, decay).toarray()
    expected = np.zeros((3, 8))
    for d in ("arts", "office"):
        inside = domains == d
        both = (x[:, inside].sum(1) > 0) & (x[:, ~inside].sum(1) > 0)
        sim = (h[:, ~inside] @ x[both][:, ~inside].T) ** power
        expected[:, inside] = sim @ x[both][:, inside]
    np.testing.assert_allclose(gen.score(histories), expected, rtol=1e-5)


def test_userknn_save_load_and_errors(tmp_path):
    train = _two_domains()
    gen = CrossDomainUserKNNGenerator(similarity_power=0.7).fit(train)
    histories = [History(items=np.array([0, 2])), History(items=np.array([3, 5]))]
    loaded = load_generator(gen.save(tmp_path / "uknn"))
    assert loaded.similarity_power == 0.7
    np.testing.assert_array_equal(loaded.score(histories), gen.score(histories))
    one = _one_domain(train)
    with pytest.raises(ConfigError, match="at least two domains"):
        CrossDomainUserKNNGenerator().fit(one)
    with pytest.raises(ConfigError, match="similarity_power"):
        CrossDomainUserKNNGenerator(similarity_power=0.0)
    with pytest.raises(ConfigError, match="recency_decay"):
        CrossDomainUserKNNGenerator(recency_decay=1.5)
