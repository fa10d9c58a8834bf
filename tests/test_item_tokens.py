"""eval/exp_item_tokens.py: training chunks, padding, the title-initialised item matrix and one
real training step of the item-token LM on SmolLM2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import exp_item_tokens as it  # noqa: E402


def test_chunks_make_every_item_after_the_first_a_target_exactly_once():
    seqs = [np.arange(120), np.arange(1000, 1004), np.arange(2000, 2002)]
    chunks = it.training_chunks(seqs, length=50)
    assert all(3 <= len(c) <= 51 for c in chunks)
    targets = np.concatenate([c[1:] for c in chunks])
    assert sorted(targets.tolist()) == sorted([*range(1, 120), *range(1001, 1004)])  # 2-item user: none
    assert chunks[0].tolist() == list(range(69, 120))  # cut from the end: the latest items first


def test_right_padding_keeps_rows_left_aligned():
    x = it.right_padded([np.array([3, 4, 5]), np.array([7])], value=-1)
    assert x.tolist() == [[3, 4, 5], [7, -1, -1]]


def test_item_token_lm_scores_the_catalog_and_learns(smollm_dir, monkeypatch):
    """Title vectors are word-sized and distinct; a few steps on one chunk lower its loss."""
    import torch

    monkeypatch.setattr(it, "resolve_model", lambda name: str(smollm_dir))
    titles = ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Sabrina (1995)", "Jumanji (1995)"]
    model = it.build_model(titles, rank=4, seed=0)
    words = model.decoder.get_input_embeddings().weight
    assert model.items.shape == (len(titles) + 1, words.shape[1]) and model.pad == len(titles)
    norms = model.items[:-1].norm(dim=1)
    assert torch.allclose(norms, words.norm(dim=1).mean().expand_as(norms), rtol=1e-4)
    assert float(model.items[-1].detach().abs().sum()) == 0.0
    seq = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    x, y = it.right_padded([seq[:-1]], model.pad), it.right_padded([seq[1:]], -100)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)

    def loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model.logits(model.hidden(x))[0], y[0])

    seen = []
    for _ in range(12):
        value = loss()
        seen.append(float(value))
        opt.zero_grad()
        value.backward()
        opt.step()
    assert min(seen[-3:]) < seen[0] - 0.1  # from about ln 5: it learns the cycle
    h = model.last_hidden([seq, seq[:3]], length=50)
    assert h.shape == (2, words.shape[1]) and not torch.allclose(h[0], h[1])


def test_a_stopped_run_resumes_to_the_same_model(smollm_dir, monkeypatch, tmp_path):
    """Stopped after its first epoch's checkpoint, a run resumed with --resume ends where an
    uninterrupted run ends: same losses, same trained weights."""
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(it, "resolve_model", lambda name: str(smollm_dir))
    titles = ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Sabrina (1995)", "Jumanji (1995)"]
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 5, size=12) for _ in range(6)]
    split = SimpleNamespace(catalog=SimpleNamespace(titles=titles), sequences=lambda stage: seqs)

    def args(run_dir: Path, resume: bool) -> SimpleNamespace:
        return SimpleNamespace(
            rank=2, seed=0, lr=3e-3, length=5, batch=4, epochs=2, run_dir=run_dir, resume=resume
        )

    calls = {"n": 0}

    def validate(model, lists, length, path):
        calls["n"] += 1
        if lists == "stop" and calls["n"] == 2:
            raise KeyboardInterrupt  # stopped during epoch 1, after epoch 0's checkpoint
        return {"valid_alone": 0.0, "valid_fused": float(calls["n"]), "valid_weight": 1.0}

    monkeypatch.setattr(it, "validate", validate)
    whole, record = it.train(args(tmp_path / "whole", False), split, "go")
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        it.train(args(tmp_path / "stopped", False), split, "stop")
    assert (tmp_path / "stopped" / "checkpoint.pt").is_file() and not (
        tmp_path / "stopped" / "best.pt"
    ).exists()
    resumed, again = it.train(args(tmp_path / "stopped", True), split, "go")
    assert [e["loss"] for e in again["epochs"]] == [e["loss"] for e in record["epochs"]]
    assert again["best_epoch"] == record["best_epoch"] == 1
    a, b = it.trained_state(whole), it.trained_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "stopped" / "best.pt").is_file() and (tmp_path / "stopped" / "training.json").is_file()


def test_list_scores_and_catalog_ndcg_read_one_catalog_score_matrix():
    """The candidates' scores are their columns of the catalog scores; the catalog NDCG ranks the
    target against every item the user has not seen."""
    from types import SimpleNamespace

    from llmrec.evaluation.experiment import StageLists
    from llmrec.evaluation.retrieval import RankedUsers

    logits = np.array([[0.0, 5.0, 1.0, 2.0, 3.0], [4.0, 0.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    ranked = RankedUsers(
        ranks=np.array([2, 99]),  # user 1's target was not retrieved: not scored
        candidates=np.array([[4, 3, -1], [0, 2, 3]]),
        fallback=np.array([False, False]),
        seconds=0.0,
    )
    hist = [SimpleNamespace(items=np.array([1])), SimpleNamespace(items=np.array([0]))]
    lists = StageLists(None, np.array([0, 1]), hist, np.array([3, 2]), ranked)
    scored = it.list_scores(logits, 0.5, lists)
    assert scored.users.tolist() == [0] and scored.scores[0].tolist() == [3.0, 2.0, 0.0]
    # user 0: item 1 (5.0) is history, item 4 (3.0) beats the target -> rank 2; user 1: rank 1
    expected = (1 / np.log2(3) + 1.0) / 2
    assert it.catalog_ndcg(logits, lists) == pytest.approx(expected)
    assert logits[0, 1] == 5.0  # the caller's matrix is left as it was


def test_snapshot_ensemble_averages_the_epochs_chosen_on_validation(tmp_path):
    """Epoch 0 ranks the held-out item last, epoch 1 first: the ensemble starting at epoch 1
    wins on validation; a missing epoch file means no ensemble."""
    from types import SimpleNamespace

    from llmrec.evaluation.experiment import StageLists
    from llmrec.evaluation.retrieval import RankedUsers

    ranked = RankedUsers(np.array([3, 3]), np.array([[0, 1, 2], [0, 1, 2]]), np.zeros(2, bool), 0.0)
    hist = [SimpleNamespace(items=np.array([3])), SimpleNamespace(items=np.array([3]))]
    lists = StageLists(None, np.array([4, 7]), hist, np.array([2, 2]), ranked)
    stages = {"valid": lists, "test": lists}
    bad = np.array([[9.0, 0.0, -9.0, 0.0]] * 2, dtype=np.float32)
    good = np.array([[0.0, 1.0, 9.0, 0.0]] * 2, dtype=np.float32)
    for epoch, logits in enumerate([bad, good]):
        it.save_catalog_scores(
            it.epoch_scores_path(tmp_path, epoch), {s: (logits, 0.0) for s in stages}, stages
        )
    first, mean = it.snapshot_ensemble(tmp_path, 2, stages)
    assert first == 1 and np.allclose(np.exp(mean["test"][0]).sum(1), 1.0)
    with np.load(it.epoch_scores_path(tmp_path, 1)) as z:
        assert z["valid_users"].tolist() == [4, 7]
    assert it.snapshot_ensemble(tmp_path, 3, stages) is None
    loaded = it.load_catalog_scores(it.epoch_scores_path(tmp_path, 1), stages)
    assert np.array_equal(loaded["test"][0], good) and loaded["test"][1] == 0.0
    other = StageLists(None, np.array([4, 8]), hist, np.array([2, 2]), ranked)  # another user set
    assert it.load_catalog_scores(it.epoch_scores_path(tmp_path, 1), {"valid": other, "test": other}) is None
    assert it.load_catalog_scores(it.epoch_scores_path(tmp_path, 5), stages) is None


def test_combiner_reads_one_run_as_is_and_several_as_their_mean_log_softmax(tmp_path):
    """``exp_combiner --item-token-scores``: one file's scores unchanged, two files' mean
    log-softmax (an ensemble of training seeds); runs scored for other users are refused."""
    from types import SimpleNamespace

    import exp_combiner
    from scipy.special import log_softmax

    from llmrec.evaluation.experiment import StageLists

    hist = [SimpleNamespace(items=np.array([0]))] * 2
    lists = StageLists(None, np.array([4, 7]), hist, np.array([2, 2]), None)
    a = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    b = np.array([[5.0, 1.0, 0.0], [0.0, 0.0, 9.0]], dtype=np.float32)
    for name, logits in (("a.npz", a), ("b.npz", b)):
        it.save_catalog_scores(
            tmp_path / name, {s: (logits, 0.0) for s in ("valid", "test")}, {"valid": lists, "test": lists}
        )
    one = exp_combiner.load_item_token_scores([tmp_path / "a.npz"])
    assert np.array_equal(one["test"][0], [4, 7]) and np.array_equal(one["test"][1], a)
    both = exp_combiner.load_item_token_scores([tmp_path / "a.npz", tmp_path / "b.npz"])
    expected = (log_softmax(a, axis=1) + log_softmax(b, axis=1)) / 2
    assert np.allclose(both["valid"][1], expected)
    other = StageLists(None, np.array([4, 8]), hist, np.array([2, 2]), None)
    it.save_catalog_scores(
        tmp_path / "c.npz", {s: (b, 0.0) for s in ("valid", "test")}, {"valid": other, "test": other}
    )
    with pytest.raises(SystemExit, match="c.npz"):
        exp_combiner.load_item_token_scores([tmp_path / "a.npz", tmp_path / "c.npz"])


def test_recipe_sets_the_options_and_the_command_line_overrides_it(tmp_path):
    """``--config finetune/item-tokens-ml-latest-small.yaml`` gives the recipe's options; an
    option on the command line wins; an unknown key or a value of the wrong type is refused
    with the file and key named."""
    recipe = Path(__file__).resolve().parents[1] / "finetune" / "item-tokens-ml-latest-small.yaml"
    args = it.parse_args(["--config", str(recipe)])
    assert (args.epochs, args.rank, args.lr, args.seed) == (10, 16, 1e-3, 0)
    assert args.run_dir == Path("runs/item-tokens-ml-latest-small") and not args.resume
    args = it.parse_args(["--config", str(recipe), "--seed", "1", "--resume"])
    assert args.seed == 1 and args.resume and args.epochs == 10
    for text, message in (
        ("epochz: 3\n", "unknown key 'epochz'"),
        ("epochs: 1.5\n", "epochs: 1.5 is not an int"),
        ("epochs: ten\n", "epochs: 'ten' is not an int"),
        ("resume: 1\n", "resume: 1 is not true or false"),
        ("- 3\n", "expected a mapping"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(SystemExit, match=message) as err:
            it.parse_args(["--config", str(bad)])
        assert "bad.yaml" in str(err.value)
    with pytest.raises(SystemExit, match="no such file"):
        it.parse_args(["--config", str(tmp_path / "missing.yaml")])


def test_epoch_plot_reads_reports_and_refuses_other_json(tmp_path):
    import json

    import plot_item_tokens

    epochs = [
        {"epoch": e, "loss": 7.0 - e, "valid_catalog_ndcg@10": 0.03 * e, "valid_fused": 0.1} for e in range(3)
    ]
    rows = {"alone, valid": {"retriever_ndcg@10": [0.105, 0.09, 0.12]}}
    report = {
        "args": {"seed": 1},
        "training": {"epochs": epochs},
        "evaluation": {"best epoch (2)": {"rows": rows}},
    }
    good = tmp_path / "run.json"
    good.write_text(json.dumps(report), encoding="utf-8")
    assert plot_item_tokens.main([str(good), "--out", str(tmp_path / "epochs.png")]) == 0
    assert (tmp_path / "epochs.png").read_bytes()[:4] == b"\x89PNG"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}), encoding="utf-8")
    with pytest.raises(SystemExit, match="other.json: not an eval/exp_item_tokens.py report"):
        plot_item_tokens.load_run(other)


def test_refit_trains_on_the_test_stage_and_keeps_the_validation_runs_epoch(
    smollm_dir, monkeypatch, tmp_path
):
    """--refit-of: the model trains on the test stage's sequences, saves test scores every epoch
    and keeps the epoch that the validation run chose (not the last)."""
    from types import SimpleNamespace

    monkeypatch.setattr(it, "resolve_model", lambda name: str(smollm_dir))
    titles = ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Sabrina (1995)", "Jumanji (1995)"]
    rng = np.random.default_rng(0)
    seqs = {
        "valid": [rng.integers(0, 5, size=12) for _ in range(4)],
        "test": [rng.integers(0, 5, size=13) for _ in range(4)],
    }
    asked: list[str] = []
    split = SimpleNamespace(
        catalog=SimpleNamespace(titles=titles), sequences=lambda stage: asked.append(stage) or seqs[stage]
    )
    scored: list[Path] = []
    monkeypatch.setattr(it, "score_test_stage", lambda model, stages, length, path: scored.append(path))
    monkeypatch.setattr(it, "validate", lambda *a: pytest.fail("a refit has no validation"))
    args = SimpleNamespace(
        rank=2, seed=0, lr=3e-3, length=5, batch=4, epochs=2, run_dir=tmp_path, resume=False
    )
    _, record = it.train(args, split, {}, keep_epoch=0)
    assert asked == ["test"] and record["best_epoch"] == 0 and len(record["epochs"]) == 2
    assert scored == [it.epoch_scores_path(tmp_path, 0), it.epoch_scores_path(tmp_path, 1)]
    assert record["target_items"] == 4 * 12  # every test-stage item after the first


def test_refit_models_join_validation_runs_valid_scores_with_the_refits_test_scores(tmp_path):
    import json
    from types import SimpleNamespace

    from scipy.special import log_softmax

    from llmrec.evaluation.experiment import StageLists
    from llmrec.evaluation.retrieval import RankedUsers

    ranked = RankedUsers(np.array([3, 3]), np.array([[0, 1, 2], [0, 1, 2]]), np.zeros(2, bool), 0.0)
    hist = [SimpleNamespace(items=np.array([3]))] * 2
    lists = StageLists(None, np.array([4, 7]), hist, np.array([2, 2]), ranked)
    stages = {"valid": lists, "test": lists}
    valid_run, refit = tmp_path / "valid", tmp_path / "refit"
    rng = np.random.default_rng(1)
    v_scores = [rng.normal(size=(2, 4)).astype(np.float32) for _ in range(3)]
    r_scores = [rng.normal(size=(2, 4)).astype(np.float32) for _ in range(3)]
    for e in range(3):
        it.save_catalog_scores(
            it.epoch_scores_path(valid_run, e), {s: (v_scores[e], 0.0) for s in stages}, stages
        )
        it.save_catalog_scores(it.epoch_scores_path(refit, e), {"test": (r_scores[e], 0.0)}, {"test": lists})
    epochs = [{"epoch": e, "valid_fused": 0.1} for e in range(3)]
    (valid_run / "training.json").write_text(
        json.dumps({"best_epoch": 1, "epochs": epochs}), encoding="utf-8"
    )
    record = it.validation_record(valid_run, 3)
    assert record["best_epoch"] == 1
    with pytest.raises(SystemExit, match="--epochs 4"):
        it.validation_record(valid_run, 4)
    models = it.refit_models(valid_run, record, refit, stages)
    best = models["best epoch (1), test-stage refit"]
    assert np.array_equal(best["valid"][0], v_scores[1]) and np.array_equal(best["test"][0], r_scores[1])
    ((name, ensemble),) = [(k, m) for k, m in models.items() if k.startswith("mean of epochs")]
    first = int(name.split()[3].split("-")[0])
    expected = np.mean([log_softmax(r_scores[e], axis=1) for e in range(first, 3)], axis=0)
    assert np.allclose(ensemble["test"][0], expected)
    (refit / "epoch-scores" / "2.npz").unlink()
    with pytest.raises(SystemExit, match="2.npz"):
        it.refit_models(valid_run, record, refit, stages)


def test_catalog_scores_are_written_atomically_under_their_own_name(tmp_path):
    from types import SimpleNamespace

    lists = SimpleNamespace(users=np.array([3, 5]))
    path = tmp_path / "epoch-scores" / "0.npz"
    scores = np.arange(8, dtype=np.float32).reshape(2, 4)
    it.save_catalog_scores(path, {"test": (scores, 1.5)}, {"test": lists})
    assert sorted(p.name for p in path.parent.iterdir()) == ["0.npz"]  # no temporary left behind
    loaded = it.load_catalog_scores(path, {"test": lists})
    assert loaded is not None and np.array_equal(loaded["test"][0], scores) and loaded["test"][1] == 1.5
    assert it.load_catalog_scores(path, {"test": SimpleNamespace(users=np.array([3, 6]))}) is None


def test_skip_training_without_a_finished_run_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="no training.json or best.pt"):
        it.finished_record(tmp_path, "best.pt")
    (tmp_path / "training.json").write_text('{"best_epoch": 2, "epochs": []}', encoding="utf-8")
    assert it.finished_record(tmp_path)["best_epoch"] == 2
