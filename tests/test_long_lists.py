"""eval/exp_long_lists.py: the item-token LM reranking fused-seq's top-K for longer K."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import exp_item_tokens as it  # noqa: E402
import exp_long_lists as ll  # noqa: E402

from llmrec.evaluation.experiment import StageLists  # noqa: E402
from llmrec.evaluation.retrieval import RankedUsers  # noqa: E402


def _lists(ranks: list[int], candidates: list[list[int]], targets: list[int]) -> StageLists:
    n = len(ranks)
    ranked = RankedUsers(np.array(ranks), np.array(candidates), np.zeros(n, bool), 0.0)
    hist = [SimpleNamespace(items=np.array([], dtype=np.int64))] * n
    return StageLists(None, np.arange(n), hist, np.array(targets), ranked)


def test_a_longer_list_lets_the_lm_lift_an_item_the_retriever_ranked_low():
    # user 0's held-out item 5 is the retriever's 6th; user 1's (item 0) its 1st.
    lists = _lists([6, 1], [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]], [5, 0])
    logits = np.zeros((2, 6))
    logits[0, 5] = 10.0  # the LM is sure of user 0's item
    cut = ll.truncated(lists, 4)
    assert cut.ranked.candidates.shape == (2, 4) and cut.ranked.ranks.tolist() == [6, 1]
    assert ll.final_ranks(logits, cut, 0.0).tolist() == [6, 1]  # not in the top-4: the retriever's rank
    assert ll.final_ranks(logits, lists, 0.0).tolist()[0] == 1  # in the top-6: lifted to the top
    assert ll.final_ranks(logits, lists, 1e6).tolist() == [6, 1]  # a huge weight: the retriever's order


def test_choice_prefers_the_best_then_the_shorter_list_the_larger_weight_the_earlier_model():
    tables = {
        "epoch 0": {(20, 0.0): 0.10, (50, 1.0): 0.12, (100, 2.0): 0.12},
        "epoch 1": {(20, 0.0): 0.11, (50, 4.0): 0.12},
    }
    assert ll.best_choice(tables) == ("epoch 1", 50, 4.0)
    tied = {"epoch 0": {(50, 1.0): 0.12}, "epoch 1": {(50, 1.0): 0.12 + 1e-14}}  # equal to 12 places
    assert ll.best_choice(tied) == ("epoch 0", 50, 1.0)


def test_epochs_load_while_their_files_exist_and_none_is_an_error(tmp_path):
    lists = _lists([1, 2], [[0, 1], [1, 0]], [0, 0])
    stages = {"valid": lists, "test": lists}
    with pytest.raises(SystemExit, match="no epoch"):
        ll.load_epochs(tmp_path, stages)
    for e in range(2):
        scores = np.full((2, 3), float(e), dtype=np.float32)
        it.save_catalog_scores(it.epoch_scores_path(tmp_path, e), {s: (scores, 0.0) for s in stages}, stages)
    epochs = ll.load_epochs(tmp_path, stages)
    assert len(epochs) == 2 and epochs[1]["test"][0, 0] == 1.0
