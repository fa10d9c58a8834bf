"""Score fusion of the LLM's candidate scores with the retriever order, its weight choice, and
ensembles of rerankers."""

import numpy as np
import pytest

from llmrec.candidates.base import Candidates
from llmrec.config import RecommendConfig
from llmrec.errors import ConfigError
from llmrec.evaluation.config import EvalConfig
from llmrec.evaluation.llm_stage import RerankScores, choose_weight, mean_log_softmax
from llmrec.evaluation.retrieval import RankedUsers
from llmrec.pipeline import fuse_with_retriever, rerank_order


def test_zero_weight_keeps_the_llm_order_and_a_large_one_the_retriever_order():
    llm = np.array([-5.0, -1.0, -3.0, -0.5])
    assert list(rerank_order(fuse_with_retriever(llm, 0.0))) == [3, 1, 2, 0]
    assert list(rerank_order(fuse_with_retriever(llm, 100.0))) == [0, 1, 2, 3]
    assert list(rerank_order(fuse_with_retriever(llm, float("inf")))) == [0, 1, 2, 3]


def test_moderate_weight_lets_a_confident_llm_overrule_the_retriever_but_not_a_hesitant_one():
    confident = np.array([-9.0, 0.0, -9.0])  # the LLM is sure about candidate 1
    hesitant = np.array([-1.0, -0.9, -1.0])  # nearly uniform
    assert rerank_order(fuse_with_retriever(confident, 1.0))[0] == 1
    assert rerank_order(fuse_with_retriever(hesitant, 1.0))[0] == 0


def test_fusion_is_invariant_to_a_constant_shift_of_the_llm_scores():
    llm = np.array([-2.0, -1.0, -4.0])
    np.testing.assert_allclose(fuse_with_retriever(llm, 2.0), fuse_with_retriever(llm + 50.0, 2.0))


def _scored(llm_rows, targets_pos):
    """Two users, 3 candidates each, items 0..5; the retriever ranks the target at targets_pos."""
    cands = np.array([[0, 1, 2], [3, 4, 5]])
    targets = np.array([cands[u, p] for u, p in enumerate(targets_pos)])
    ranked = RankedUsers(np.array(targets_pos) + 1, cands, np.zeros(2, bool), 0.0)
    candidates = Candidates(cands, np.zeros(cands.shape, np.float32), np.zeros(2, bool))
    scored = RerankScores(np.arange(2), candidates, [np.asarray(r, float) for r in llm_rows], 0.0, 2)
    return scored, ranked, targets


def test_choose_weight_picks_the_validation_argmax():
    # the LLM puts both targets first: weight 0 is best
    scored, ranked, targets = _scored([[-3, -2, -0.1], [-3, -0.1, -2]], [2, 1])
    weight, table = choose_weight(scored, ranked, targets, [0.0, 1.0, 50.0])
    assert weight == 0.0 and table[0.0] > table[50.0]
    # the LLM is wrong and the retriever right: a large weight wins
    scored, ranked, targets = _scored([[-3, -0.1, -2], [-0.1, -3, -2]], [0, 1])
    weight, _ = choose_weight(scored, ranked, targets, [0.0, 50.0])
    assert weight == 50.0


def test_bad_fusion_settings_are_refused():
    with pytest.raises(ConfigError, match="retriever_weight"):
        RecommendConfig(retriever_weight=-1)
    with pytest.raises(ConfigError, match="fusion_weights"):
        EvalConfig(fusion_weights=[-0.5])
    with pytest.raises(ConfigError, match="stage"):
        EvalConfig(fusion_weights=[1.0], stage="valid")


def test_an_ensemble_averages_log_probabilities_so_a_confident_member_is_not_drowned_by_scale():
    # Member a's raw scores are on a far larger scale; as log-probabilities they weigh alike.
    a, ranked, targets = _scored([[100.0, 101.0, 99.0], [0.0, 0.0, 0.0]], [0, 0])
    b, _, _ = _scored([[0.0, -5.0, -5.0], [-1.0, -1.0, -1.0]], [0, 0])
    both = mean_log_softmax([a, b])
    # user 0: a prefers 1 by one nat, b prefers 0 by five: the mean follows b
    assert both.ranks(ranked, targets).ranks[0] == 1
    assert a.ranks(ranked, targets).ranks[0] == 2
    np.testing.assert_allclose(np.exp(both.scores[1]).sum(), 1.0)  # uniform + uniform: still uniform
    assert both.prompts == a.prompts + b.prompts
    # an ensemble of one reranker with itself ranks as that reranker
    np.testing.assert_array_equal(
        mean_log_softmax([a, a]).ranks(ranked, targets).ranks, a.ranks(ranked, targets).ranks
    )


def test_an_ensemble_refuses_members_that_scored_other_lists():
    a, _, _ = _scored([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], [0, 0])
    other = RerankScores(np.array([0, 5]), a.candidates, a.scores, 0.0, 2)
    with pytest.raises(ValueError, match="same users"):
        mean_log_softmax([a, other])


def test_mean_log_softmax_rows_weighs_each_matrix_as_log_probabilities():
    from llmrec.evaluation.llm_stage import mean_log_softmax_rows

    a = np.array([[100.0, 101.0, 99.0], [0.0, 0.0, 0.0]])  # a large scale: one nat for item 1
    b = np.array([[0.0, -5.0, -5.0], [-1.0, -1.0, -1.0]])  # five nats for item 0
    both = mean_log_softmax_rows([a, b])
    assert both.shape == a.shape and int(np.argmax(both[0])) == 0
    np.testing.assert_allclose(np.exp(both[1]).sum(), 1.0)  # uniform + uniform: still uniform
    with pytest.raises(ValueError, match="one shape"):
        mean_log_softmax_rows([a, b[:, :2]])
