"""The verbalizer reranker with a real forward pass of the offline default model."""

import numpy as np
import pytest

from llmrec.llm.reranker import LLMReranker, RerankParams, parse_labels
from llmrec.pipeline import rerank_order

HIST = [["Toy Story (1995)", "Finding Nemo (2003)", "Shrek (2001)"], ["Heat (1995)", "Se7en (1995)"]]
CANDS = [
    ["Heat (1995)", "Toy Story 2 (1999)", "Casino (1995)", "Monsters, Inc. (2001)"],
    ["Toy Story 2 (1999)", "The Usual Suspects (1995)", "Fargo (1996)"],
]


@pytest.fixture(scope="module")
def reranker(smollm_backend):
    return LLMReranker(smollm_backend, "listwise")


def test_label_logprobs_are_real_log_probabilities(smollm_backend, reranker):
    logp = smollm_backend.label_logprobs(
        ["<|im_start|>user\nSay A<|im_end|>\n<|im_start|>assistant\n"], reranker.label_ids
    )
    assert logp.shape == (1, 20)
    assert np.all(logp < 0) and np.exp(logp).sum() <= 1.0 + 1e-4


def test_scores_one_per_candidate_and_deterministic(reranker):
    first = reranker.score(HIST, CANDS, RerankParams(progress=False))
    second = reranker.score(HIST, CANDS, RerankParams(progress=False))
    assert [len(s) for s in first] == [4, 3]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert len(set(np.round(first[0], 4))) > 1  # the model does discriminate


def test_batching_does_not_change_scores(smollm_backend, reranker):
    prompts, _ = reranker.build_prompts(HIST, CANDS, RerankParams())
    together = smollm_backend.label_logprobs(prompts, reranker.label_ids)
    alone = np.vstack([smollm_backend.label_logprobs([p], reranker.label_ids) for p in prompts])
    np.testing.assert_allclose(together, alone, atol=0.15)  # bf16 + padding
    assert (together.argmax(1) == alone.argmax(1)).all()


def test_shuffled_average_is_seeded(reranker):
    a = reranker.score(HIST, CANDS, RerankParams(shuffles=3, seed=1, progress=False))
    b = reranker.score(HIST, CANDS, RerankParams(shuffles=3, seed=1, progress=False))
    c = reranker.score(HIST, CANDS, RerankParams(shuffles=0, progress=False))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.allclose(x, z) for x, z in zip(a, c))


def test_shuffled_scores_follow_their_candidates(reranker):
    prompts, layout = reranker.build_prompts(HIST[:1], CANDS[:1], RerankParams(shuffles=2, seed=5))
    for prompt, (_, order) in zip(prompts, layout):
        for label_pos, cand in enumerate(order):
            assert f"({'ABCD'[label_pos]}) {CANDS[0][cand]}" in prompt


def test_pointwise_template(smollm_backend):
    pw = LLMReranker(smollm_backend, "pointwise")
    scores = pw.score(HIST[:1], CANDS[:1], RerankParams(progress=False))
    assert scores[0].shape == (4,) and np.isfinite(scores[0]).all()


def test_generation_mode_returns_a_ranking(reranker):
    scores = reranker.score(
        HIST[:1], CANDS[:1], RerankParams(mode="generate", max_new_tokens=8, progress=False)
    )
    assert scores[0].shape == (4,)


def test_parse_labels_and_order():
    assert parse_labels("C, then A. Also C and (B)", ["A", "B", "C", "D"]) == [2, 0, 1]
    assert rerank_order(np.array([0.1, 0.5, 0.5, -1.0])).tolist() == [1, 2, 0, 3]
