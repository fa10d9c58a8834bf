"""eval/exp_windows.py: the item-token LM against fused-seq on each user's last five items."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import exp_windows as ew  # noqa: E402

from llmrec.data.split import _split_sequences  # noqa: E402
from llmrec.evaluation.experiment import StageLists  # noqa: E402
from llmrec.evaluation.retrieval import RankedUsers  # noqa: E402
from llmrec.evaluation.stats import bootstrap_indices, paired_difference  # noqa: E402

N_ITEMS = 6


def _lists(targets: list[int]) -> StageLists:
    """Every user's list is items 0..5 in that order (the retriever's); the target's rank is its
    position in it."""
    n = len(targets)
    cands = np.tile(np.arange(N_ITEMS), (n, 1))
    ranked = RankedUsers(np.array(targets) + 1, cands, np.zeros(n, bool), 0.0)
    hist = [SimpleNamespace(items=np.array([], dtype=np.int64))] * n
    return StageLists(None, np.arange(n), hist, np.array(targets), ranked)


def _windows(targets: dict[str, list[int]]) -> ew.Windows:
    return {name: {k: _lists(t) for k in ew.LENGTHS} for name, t in targets.items()}


def _sure_of(targets: list[int]) -> np.ndarray:
    """Catalog scores that put each user's target first."""
    logits = np.zeros((len(targets), N_ITEMS), dtype=np.float32)
    logits[np.arange(len(targets)), targets] = 1e4
    return logits


def test_the_window_b_steps_back_is_the_shifted_splits_test_stage():
    seqs = [np.arange(10), np.arange(20, 32)]
    split = _split_sequences(None, np.array(["a", "b"]), seqs)
    for back in range(5):
        shifted = split.shifted(back)
        assert shifted.test.tolist() == [s[-1 - back] for s in seqs]
        assert [h.tolist() for h in shifted.sequences("test")] == [
            s[: len(s) - 1 - back].tolist() for s in seqs
        ]
    # b = 1 is the protocol's validation stage, b = 0 its test stage
    assert split.shifted(1).test.tolist() == split.valid.tolist()
    # the model trains on what comes before the earliest window, whatever the number of windows
    for windows in (3, 5):
        trained_on = ew.training_split(split, windows).sequences("valid")
        assert [t.tolist() for t in trained_on] == [s[:-windows].tolist() for s in seqs]
    assert [ew.window_name(b) for b in (4, 0)] == ["n-5", "n-1"]


def test_windows_come_earliest_first_each_from_its_shifted_split(monkeypatch):
    seqs = [np.arange(10), np.arange(20, 32)]
    split = _split_sequences(None, np.array(["a", "b"]), seqs)
    calls = []

    def fake_stage_lists(run, shifted, stage, users, window):
        calls.append((stage, window))
        return _lists([int(t) % N_ITEMS for t in shifted.test])

    monkeypatch.setattr(ew, "suite_stage_lists", fake_stage_lists)
    lists = ew.window_lists(None, split, 3)
    assert list(lists) == ["n-3", "n-2", "n-1"]  # the earliest first: the selection windows lead
    assert calls == [("test", 2), ("test", 1), ("test", 0)]
    assert lists["n-1"][20].targets.tolist() == [9 % N_ITEMS, 31 % N_ITEMS]
    with pytest.raises(SystemExit, match="fewer --windows"):
        ew.window_lists(None, split, 9)  # the first user has 10 items, 11 needed


def test_only_the_selection_windows_choose_and_the_test_is_each_users_mean_over_the_others():
    targets = {"n-3": [2, 3], "n-2": [1, 4], "n-1": [5, 2]}
    lists = _windows(targets)
    sure = {n: _sure_of(ts) for n, ts in targets.items()}
    last = {n: -_sure_of(ts) for n, ts in targets.items()}  # each target ranked last
    blank = np.zeros((2, N_ITEMS), dtype=np.float32)
    # epoch 0 knows the selection window and ranks the test targets last; epoch 1 the reverse.
    # Chosen on every window, epoch 1 would win; on the selection window, epoch 0 does.
    epochs = [{**last, "n-3": sure["n-3"]}, {**sure, "n-3": blank}]
    result = ew.analyse(epochs, lists, n_select=1, boot=(200, 0))
    primary = result["rows"][0]
    assert result["select_windows"] == ["n-3"] and result["test_windows"] == ["n-2", "n-1"]
    assert primary["name"].startswith("epoch 0")
    assert primary["weight"] == max(ew.FUSION_WEIGHTS)  # every weight ties at 1.0: the largest
    assert primary["selection"]["ndcg@10"][0] == pytest.approx(1.0)
    assert result["selection_by_epoch"]["1"] < 1.0
    # test: every test target last of the 6 after reranking; fused-seq's NDCG@10 averaged over the
    # test windows per user, then paired over users
    ref = np.mean([[1 / np.log2(t + 2) for t in targets[n]] for n in ("n-2", "n-1")], axis=0)
    diff = 1 / np.log2(7) - ref
    assert primary["test"]["diff_vs_retriever"][0] == pytest.approx(float(diff.mean()))
    assert primary["test"]["retriever_ndcg@10"][0] == pytest.approx(float(ref.mean()))
    assert set(primary["windows"]) == set(targets)


def test_the_bootstrap_resamples_users_not_user_windows():
    # users 0-4 gain in both test windows, users 5-9 in neither: the unit of resampling is the
    # user (both windows together), which gives a wider CI than resampling the 20 user-windows
    n = 10
    targets = {"n-3": [0] * n, "n-2": [5] * n, "n-1": [5] * n}
    lists = _windows(targets)
    scores = {name: _sure_of(ts) for name, ts in targets.items()}
    for name in ("n-2", "n-1"):
        scores[name][5:] = 0.0  # users 5-9: the retriever's order
    d = ew.analyse([scores], lists, n_select=1, boot=(400, 0))["rows"][0]["test"]["diff_vs_retriever"]
    gain = np.where(np.arange(n) < 5, 1.0 - 1 / np.log2(7), 0.0)
    by_user = paired_difference(gain, np.zeros(n), bootstrap_indices(n, 400, 0))
    by_window = paired_difference(np.tile(gain, 2), np.zeros(2 * n), bootstrap_indices(2 * n, 400, 0))
    assert d == pytest.approx(by_user)
    assert d[2] - d[1] > by_window[2] - by_window[1]


def test_a_run_dir_keeps_its_windows_and_selection(tmp_path):
    ew.same_windows(tmp_path / "run", 5, 2)
    ew.same_windows(tmp_path / "run", 5, 2)  # the same: fine
    with pytest.raises(SystemExit, match="--windows 5 --select 2"):
        ew.same_windows(tmp_path / "run", 5, 3)


def test_training_stages_name_the_earliest_window_valid_and_keep_the_top_20():
    lists = _windows({"n-3": [0], "n-2": [1], "n-1": [2]})
    stages = ew.training_stages(lists)
    assert list(stages) == ["valid", "n-2", "n-1"]
    assert stages["valid"] is lists["n-3"][20]


def test_options_need_a_selection_window_and_a_test_window(tmp_path):
    with pytest.raises(SystemExit):
        ew.parse_args(["--windows", "3", "--select", "3"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 10\nseed: 4\nrun_dir: runs/other\nout: other.json\n", encoding="utf-8")
    args = ew.parse_args(["--config", str(recipe), "--epochs", "8"])
    assert (args.epochs, args.seed) == (8, 4)
    assert args.run_dir == Path("runs/windows-ml-latest-small")  # not the recipe's own run dir


def test_the_plot_is_written(tmp_path):
    targets = {"n-2": [1, 4], "n-1": [5, 2]}
    sure = {n: _sure_of(ts) for n, ts in targets.items()}
    result = {"analysis": ew.analyse([sure], _windows(targets), n_select=1, boot=(50, 0))}
    ew.plot(result, tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000
