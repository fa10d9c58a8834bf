"""The history LM (``task: history``): training texts from training items only, every title a
target tokenized as the likelihood scorer reads it; the adapter's manifest selects the
likelihood scorer; a real tuning run through the CLI, scored through the pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmrec.config import ModelConfig
from llmrec.errors import ConfigError
from llmrec.finetune import FinetuneConfig
from llmrec.finetune.histories import history_dataset
from llmrec.llm.likelihood import CandidateLikelihood, LikelihoodParams, LikelihoodReranker, history_line

HEADER = "A user's favourite movies, one per line:\n"


def test_history_texts_are_training_items_in_order_every_title_a_target(ml_small_split, smollm_tokenizer):
    split, tok = ml_small_split, smollm_tokenizer
    users = np.array([0, 3, 7])
    ds = history_dataset(
        split.train, split.catalog.titles, tok, header=HEADER, window=10, users=users, max_title_chars=40
    )
    head = tok.encode(HEADER, add_special_tokens=False)
    assert len(ds) == sum(math.ceil(len(split.train[u]) / 10) for u in users)
    for u in users:
        rows = [r for r in ds if r["user"] == u]
        lines: list[int] = []
        for r in rows:
            ids, mask = r["input_ids"], r["completion_mask"]
            assert ids[: len(head)] == head and not any(mask[: len(head)])  # the header is no target
            assert all(mask[len(head) :])  # every title token is
            lines.extend(ids[len(head) :])
        want = [
            t
            for i in split.train[u]
            for t in tok.encode(history_line(split.catalog.titles[i], tok, 40), add_special_tokens=False)
        ]
        assert lines == want  # the user's training items, oldest first, as the scorer tokenizes them
        held_out = {split.valid[u], split.test[u]} - set(split.train[u].tolist())
        shown = tok.decode(lines)
        for item in held_out:  # validation / test items never appear (unless also trained on)
            assert history_line(split.catalog.titles[item], tok, 40) not in shown
    with pytest.raises(ValueError, match="window"):
        history_dataset(split.train, split.catalog.titles, tok, header=HEADER, window=0)


def test_history_texts_start_with_the_tokens_the_tokenizer_puts_first(ml_small_split, smollm_tokenizer):
    """A Gemma-like tokenizer (add_bos_token) trains on texts that start with <bos>, as the
    likelihood scorer reads them; the <bos> is no target."""
    import copy

    tok = copy.deepcopy(smollm_tokenizer)
    tok.add_bos_token = True
    ds = history_dataset(
        ml_small_split.train, ml_small_split.catalog.titles, tok, header=HEADER, users=np.array([0])
    )
    for r in ds:
        assert r["input_ids"][0] == tok.bos_token_id and r["input_ids"].count(tok.bos_token_id) == 1
        assert r["completion_mask"][0] == 0


def test_history_task_needs_the_vocabulary_loss():
    with pytest.raises(ConfigError, match="loss: vocab"):
        FinetuneConfig(task="history")  # label_logits_only defaults to True
    with pytest.raises(ConfigError, match="history_window"):
        FinetuneConfig(task="history", label_logits_only=False, history_window=0)
    FinetuneConfig(task="history", label_logits_only=False, loss="vocab")


def test_a_history_adapter_selects_the_likelihood_scorer_and_its_header(tmp_path):
    (tmp_path / "adapter").mkdir()
    manifest = {"base_model": "smollm2-135m-instruct", "template": "listwise"}
    manifest["config"] = {"task": "history", "history_header": HEADER}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    cfg = ModelConfig(adapter=str(tmp_path / "adapter"))
    assert (cfg.scorer, cfg.likelihood_header) == ("likelihood", HEADER)
    ranking = ModelConfig(adapter=str(tmp_path / "adapter"), scorer="listwise", likelihood_header="x\n")
    assert ranking.likelihood_header == "x\n"  # what the user sets wins
    assert ModelConfig(scorer="likelihood", backend="vllm").scorer == "likelihood"  # prompt log-probs
    with pytest.raises(ConfigError, match="vllm-server client does not request them"):
        ModelConfig(scorer="likelihood", backend="vllm-server")


def test_ray_batch_sends_the_likelihood_scorer_to_the_engine_route():
    from llmrec.config import RecommendConfig
    from llmrec.ray_batch import check_scoring

    config = RecommendConfig(scorer="likelihood")
    with pytest.raises(ConfigError, match="--scoring engine"):
        check_scoring("staged", config)
    check_scoring("engine", config)


def test_likelihood_reranker_scores_as_the_scorer_and_keys_its_cache(smollm_backend):
    from llmrec.evaluation.llm_stage import reranker_fingerprint
    from llmrec.llm.reranker import RerankParams

    params = LikelihoodParams(header=HEADER, max_history=4)
    reranker = LikelihoodReranker(smollm_backend, params)
    hist = [["Toy Story (1995)", "Toy Story 2 (1999)"], ["Heat (1995)"]]
    cands = [["Toy Story 3 (2010)", "Casablanca (1942)"], ["Ronin (1998)", "Bambi (1942)", "Up (2009)"]]
    got = reranker.score(hist, cands, RerankParams(progress=False))
    want = CandidateLikelihood(smollm_backend.model, smollm_backend.tokenizer, params).score(
        hist, cands, progress=False
    )
    assert [len(g) for g in got] == [2, 3]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert reranker.template.evidence is False  # no evidence is computed for it
    with pytest.raises(ConfigError, match="does not generate"):
        reranker.score(hist, cands, RerankParams(mode="generate", progress=False))
    listwise = reranker_fingerprint(ModelConfig())
    likelihood = reranker_fingerprint(ModelConfig(scorer="likelihood"))
    assert "scorer" not in listwise and likelihood["scorer"][0] == "likelihood"


@pytest.mark.slow
def test_history_lm_cli_trains_and_the_adapter_ranks_through_the_pipeline(tmp_path, ml_small_dir, smollm_dir):
    """`llmrec finetune` with task history: texts -> LoRA on a plain base -> adapter whose
    manifest makes `build_reranker` load the likelihood scorer; the weights moved."""
    from click.testing import CliRunner
    from safetensors.numpy import load_file

    from llmrec.cli import app
    from llmrec.pipeline import build_reranker

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "task: history\nhistory_window: 6\nloss: vocab\nlabel_logits_only: false\nquantization: none\n"
        "dtype: float32\nper_device_train_batch_size: 2\neval_users: 4\neval_steps: 1\nsave_steps: 1\n"
        f"threads: 1\nlearning_rate: 1.0e-3\nhistory_header: {json.dumps(HEADER)}\n"
    )
    out = tmp_path / "run"
    args = ["finetune", "--config", str(recipe), "--dataset", str(ml_small_dir), "--model", str(smollm_dir)]
    args += ["--train-users", "2", "--max-steps", "2", "--output-dir", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["task"] == "history" and manifest["data"]["users"] == 2
    assert manifest["data"]["task"] == "history" and "num_candidates" not in manifest["data"]
    assert manifest["metrics"]["best_ndcg@10"] is not None  # ranked by likelihood in training
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(np.abs(w).sum() > 0 for k, w in weights.items() if "lora_B" in k)  # B starts at 0
    cfg = ModelConfig(adapter=str(out / "adapter"), model=str(smollm_dir), dtype="float32")
    reranker = build_reranker(cfg)
    assert isinstance(reranker, LikelihoodReranker) and reranker.scorer.params.header == HEADER
    (scores,) = reranker.score([["Heat (1995)"]], [["Ronin (1998)", "Up (2009)"]])
    assert np.isfinite(scores).all()


def test_a_merged_history_adapter_scores_as_the_adapter_and_is_saved_once(tmp_path, monkeypatch, smollm_dir):
    """`merged_model` (what `--backend vllm` loads for a likelihood adapter, vLLM having no prompt
    log-probs with LoRA): base + adapter folded into one float32 model, cached under
    LLMREC_CACHE; it scores as the base with the adapter."""
    from pathlib import Path

    from llmrec.llm.models import merged_model
    from llmrec.llm.reranker import RerankParams
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    adapter = Path(__file__).parents[1] / "finetune/adapters/history-ml-latest-small/adapter"
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path))
    folder = merged_model(str(smollm_dir), adapter)
    assert folder.parent == tmp_path / "merged" and (folder / "config.json").is_file()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert merged_model(str(smollm_dir), adapter) == folder  # the second call reads the cache
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    hist = [["Toy Story (1995)", "Heat (1995)"]]
    cands = [["Toy Story 2 (1999)", "Casablanca (1942)", "Ronin (1998)"]]
    params, quiet = LikelihoodParams(header=HEADER), RerankParams(progress=False)
    scores = {}
    for name, model, with_adapter in (("merged", folder, None), ("lora", smollm_dir, str(adapter))):
        cfg = TransformersConfig(model=str(model), adapter=with_adapter, dtype="float32", device="cpu")
        scores[name] = LikelihoodReranker(TransformersBackend(cfg), params).score(hist, cands, quiet)[0]
    np.testing.assert_allclose(scores["merged"], scores["lora"], atol=1e-3)
