"""Instruction tuning: leakage-free examples, configs, a real QLoRA run on CPU, kill-and-resume.

The training tests run SmolLM2-135M-Instruct in bitsandbytes 4-bit on CPU with tiny prompts
(4 candidates, ~200 tokens, batch 2). Subprocesses get ``OMP_WAIT_POLICY=PASSIVE`` and the
configs ``threads=1``: on a CPU shared with other busy processes, OpenMP threads that spin
while waiting for each other made each step ~15x slower.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmrec.candidates import TrainData, make_generator
from llmrec.data.catalog import History
from llmrec.errors import ConfigError
from llmrec.finetune import (
    FinetuneConfig,
    InTrainingBackend,
    RankingEvaluator,
    build_examples,
    finetune,
    last_checkpoint,
    sample_users,
)
from llmrec.finetune.trainer import tokenize_examples
from llmrec.llm.backend import label_token_ids
from llmrec.llm.prompting import PromptRenderer, PromptTemplate

REPO = Path(__file__).resolve().parents[1]
TINY = {"num_candidates": 4, "max_prompt_tokens": 200}
TRAIN_ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def renderer(smollm_tokenizer):
    return PromptRenderer(PromptTemplate.load("listwise"), smollm_tokenizer, 1024)


def _shown_titles(prompt: str) -> set[str]:
    """Titles on the '(1) ...' / '(A) ...' lines of a listwise prompt."""
    out = set()
    for line in prompt.splitlines():
        if line.startswith("(") and ") " in line:
            out.add(line.split(") ", 1)[1].removesuffix("<|im_end|>"))
    return out


# --- examples --------------------------------------------------------------------------------


def test_training_prompts_never_show_validation_or_test_items(ml_small_split, retriever, renderer):
    split = ml_small_split
    ds = build_examples(split, None, retriever, renderer, windows=2, progress=False)
    assert len(ds) == 2 * split.n_users  # every ml-latest-small user has >= 3 training items
    labels = renderer.template.labels
    for row in ds:
        u, pos = row["user"], row["position"]
        held_out = {int(split.valid[u]), int(split.test[u])}
        seen = set(split.train[u].tolist()) | held_out
        hist, cands = row["history_items"], row["candidate_items"]
        assert pos >= len(split.train[u]) - 2
        assert hist == split.train[u][:pos].tolist() and row["target_item"] == split.train[u][pos]
        assert not held_out & (set(hist) | set(cands))
        assert len(set(cands)) == 20 and (set(cands) - {row["target_item"]}).isdisjoint(seen)
        # The label letter points at the target's line.
        label_line = next(x for x in row["prompt"].splitlines() if x.startswith(f"({row['completion']}) "))
        assert renderer.clean_title(split.catalog.titles[row["target_item"]]) in label_line
        assert cands[labels.index(row["completion"])] == row["target_item"]
        # And as text: no held-out title is on any line, unless a shown item has the same title.
        shown = _shown_titles(row["prompt"])
        legit = {renderer.clean_title(split.catalog.titles[i]) for i in [*hist[-20:], *cands]}
        for item in held_out:
            title = renderer.clean_title(split.catalog.titles[item])
            assert title in legit or title not in shown, (u, title)
    # Shuffled candidates: the label letter carries no position information.
    counts = np.bincount([labels.index(c) for c in ds["completion"]], minlength=20)
    assert counts.min() > 0.5 * len(ds) / 20 and counts.max() < 1.5 * len(ds) / 20


def test_examples_are_deterministic_and_seeded(ml_small_split, retriever, renderer):
    users = sample_users(ml_small_split, 40, seed=3)
    assert np.array_equal(users, sample_users(ml_small_split, 40, seed=3)) and len(set(users)) == 40
    assert np.all(np.diff(users) > 0)
    kwargs = {"num_candidates": 10, "windows": 2, "users": users, "progress": False}
    a = build_examples(ml_small_split, None, retriever, renderer, seed=7, **kwargs)
    b = build_examples(ml_small_split, None, retriever, renderer, seed=7, **kwargs)
    c = build_examples(ml_small_split, None, retriever, renderer, seed=8, **kwargs)
    assert a.to_dict() == b.to_dict()
    assert set(a["user"]) == set(users.tolist()) and len(a) == 80
    assert a["candidate_items"] != c["candidate_items"]
    assert a["target_item"] == c["target_item"]  # the seed changes negatives and order only


def test_hard_negatives_come_from_the_retriever(ml_small_split, retriever, renderer):
    split = ml_small_split
    users = sample_users(split, 20, seed=1)
    common = {"num_candidates": 8, "users": users, "progress": False}
    hard = build_examples(split, None, retriever, renderer, hard_fraction=1.0, **common)
    rand = build_examples(split, None, None, renderer, hard_fraction=0.0, **common)
    in_top = []
    for ex_hard, ex_rand in zip(hard, rand):
        hist = History(items=np.asarray(ex_hard["history_items"]))
        top = set(retriever.candidates([hist], k=40).items[0].tolist())
        negs = set(ex_hard["candidate_items"]) - {ex_hard["target_item"]}
        assert negs <= top
        in_top.append(len((set(ex_rand["candidate_items"]) - {ex_rand["target_item"]}) & top))
    assert np.mean(in_top) < 1.0  # random negatives are rarely the retriever's favourites
    with pytest.raises(ConfigError, match="hard_fraction"):
        build_examples(split, None, None, renderer, hard_fraction=0.5, **common)


def test_retriever_ordered_examples_are_the_retrievers_own_list(ml_small_split, retriever, renderer):
    split = ml_small_split
    users = sample_users(split, 60, seed=2)
    ordered = {"hard_fraction": 1.0, "windows": 3, "candidate_order": "retriever"}
    ds = build_examples(split, None, retriever, renderer, users=users, progress=False, **ordered)
    assert 0 < len(ds) < 3 * len(users)  # targets the retriever misses give no example
    labels = renderer.template.labels
    for row in ds:
        u = row["user"]
        seen = set(split.train[u].tolist()) | {int(split.valid[u]), int(split.test[u])}
        hist = History(items=np.asarray(row["history_items"]))
        top = retriever.candidates([hist], k=40).items[0].tolist()
        # The user's other items are removed; what is left keeps the retriever's order.
        expected = [i for i in top if i == row["target_item"] or i not in seen][:20]
        assert row["candidate_items"] == expected
        assert row["candidate_items"][labels.index(row["completion"])] == row["target_item"]
    # In the retriever's order the label carries its position prior: early letters dominate.
    counts = np.bincount([labels.index(c) for c in ds["completion"]], minlength=20)
    assert counts[:5].sum() > counts[5:].sum()
    with pytest.raises(ConfigError, match="hard_fraction"):
        build_examples(split, None, retriever, renderer, hard_fraction=0.5, candidate_order="retriever")
    with pytest.raises(ConfigError, match="candidate_order"):
        build_examples(split, None, retriever, renderer, candidate_order="random")
    with pytest.raises(ConfigError, match="hard_fraction"):
        FinetuneConfig(candidate_order="retriever")


def test_source_domain_examples_stay_in_the_source_domain(arts_office_dir, smollm_tokenizer):
    from llmrec.data import clean, cross_domain_split, leave_one_out, load_dataset

    data = clean(load_dataset(arts_office_dir))
    renderer = PromptRenderer(PromptTemplate.load("listwise"), smollm_tokenizer, 1024)
    cd = cross_domain_split(data, "arts", "office")
    arts = cd.catalog.domain_mask("arts")
    source_retriever = make_generator("popularity").fit(TrainData(cd.catalog, cd.source_seqs))
    users = sample_users(cd, 60, seed=0)
    common = {"num_candidates": 10, "users": users, "progress": False}
    via_cd = build_examples(cd, None, source_retriever, renderer, **common)
    # A one-domain split keeps the full catalog: negatives must still be arts items only.
    arts_split = leave_one_out(data, domain="arts")
    via_split = build_examples(arts_split, None, source_retriever, renderer, windows=2, **common)
    for ds in (via_cd, via_split):
        assert len(ds) >= 60
        for row in ds:
            assert arts[row["candidate_items"]].all() and arts[row["history_items"]].all()
    office_held_out = set(cd.target_split.valid[users].tolist()) | set(cd.target_split.test[users].tolist())
    assert not office_held_out & {i for row in via_cd["candidate_items"] for i in row}


def test_target_domain_tuning_leaves_out_the_cold_start_users(arts_office_dir):
    from llmrec.data import clean, cross_domain_split, leave_one_out, load_dataset
    from llmrec.finetune.run import _training_users

    data = clean(load_dataset(arts_office_dir))
    office = leave_one_out(data, domain="office")
    cfg = FinetuneConfig(target="office", source="arts", seed=3)
    cd = cross_domain_split(data, "arts", "office", cfg.cold_fraction, seed=3)
    cold_ids = set(cd.user_ids[cd.cold].tolist())
    assert len(cold_ids) > 100
    trained_ids = set(office.user_ids[_training_users(data, office, cfg)].tolist())
    assert trained_ids and not trained_ids & cold_ids
    few_cfg = FinetuneConfig(target="office", source="arts", train_users=64)
    default_cold = cross_domain_split(data, "arts", "office")
    few = _training_users(data, office, few_cfg)
    assert len(few) == 64
    assert not set(office.user_ids[few].tolist()) & set(default_cold.user_ids[default_cold.cold].tolist())
    with pytest.raises(ConfigError, match="target"):
        FinetuneConfig(source="arts")


def test_tokenized_examples_put_the_loss_on_the_label_only(ml_small_split, retriever, renderer):
    tok = renderer.tokenizer
    ds = build_examples(ml_small_split, None, retriever, renderer, users=[0, 1], progress=False)
    ids = dict(zip(renderer.template.labels, label_token_ids(tok, renderer.template.labels)))
    out = tokenize_examples(ds, tok, ids)
    for row, enc in zip(ds, out):
        prompt_ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]  # what the reranker scores
        assert enc["input_ids"] == [*prompt_ids, ids[row["completion"]]]
        assert enc["completion_mask"] == [0] * len(prompt_ids) + [1]


# --- config, evaluation plumbing -------------------------------------------------------------


def test_config_yaml_round_trip_and_errors(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: smollm2-135m-instruct\nlora_r: 16\neval_steps: 50\nsave_steps: 100\n")
    config = FinetuneConfig.from_yaml(path)
    assert (
        config.lora_r == 16
        and config.quantization == "4bit"
        and config.target_modules == ["q_proj", "v_proj"]
    )
    config.to_json(tmp_path / "c.json")
    assert FinetuneConfig.from_yaml(tmp_path / "c.json") == config
    path.write_text("lora_rank: 16\n")
    with pytest.raises(ConfigError, match="lora_r"):
        FinetuneConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="save_steps"):
        FinetuneConfig(eval_steps=30, save_steps=100)
    with pytest.raises(ConfigError, match="quantization"):
        FinetuneConfig(quantization="3bit")
    with pytest.raises(ConfigError, match="sft_args"):
        FinetuneConfig(sft_args={"no_such_field": 1})


# item-tokens-*.yaml are eval/exp_item_tokens.py --config recipes (tests/test_item_tokens.py).
LLMREC_RECIPES = sorted(
    p
    for p in (Path(__file__).parents[1] / "finetune").glob("*.yaml")
    if not p.name.startswith("item-tokens-")
)


@pytest.mark.parametrize("recipe", LLMREC_RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_valid_configs(recipe):
    config = FinetuneConfig.from_yaml(recipe)
    assert PromptTemplate.load(config.template).task == "listwise" and config.output_dir
    sft = config.to_sft_config("unused", use_cpu=True, bf16=False, evaluate=True)
    assert sft.max_steps == config.max_steps


def test_sft_config_trains_on_the_label_only(tmp_path):
    sft = FinetuneConfig(eval_steps=10, save_steps=20, seed=5).to_sft_config(
        tmp_path, use_cpu=True, bf16=False, evaluate=True
    )
    assert sft.completion_only_loss is True and sft.max_length is None
    assert sft.use_cpu and not sft.bf16 and sft.gradient_checkpointing and sft.seed == 5
    assert sft.metric_for_best_model == "ndcg@10" and sft.load_best_model_at_end and sft.greater_is_better
    assert not sft.report_to or sft.report_to == ["none"] or sft.report_to == "none"


def test_in_training_backend_scores_like_the_transformers_backend(smollm_backend, renderer):
    prompts = [
        renderer.render(["Toy Story (1995)", "Shrek (2001)"], ["Heat (1995)", "Monsters, Inc. (2001)"]),
        renderer.render(["Heat (1995)"], ["Casino (1995)", "Fargo (1996)", "Up (2009)"]),
    ]
    ids = label_token_ids(smollm_backend.tokenizer, ["A", "B", "C"])
    wrapped = InTrainingBackend(smollm_backend.model, smollm_backend.tokenizer, batch_size=4)
    np.testing.assert_allclose(
        wrapped.label_logprobs(prompts, ids), smollm_backend.label_logprobs(prompts, ids)
    )
    assert not smollm_backend.model.training  # the previous mode is restored


def test_ranking_evaluator_samples_retrieved_validation_users(ml_small_split, retriever):
    a = RankingEvaluator(ml_small_split, retriever, users=16, seed=2)
    b = RankingEvaluator(ml_small_split, retriever, users=16, seed=2)
    assert np.array_equal(a.users, b.users) and len(a.users) == 16
    assert np.all(a.ranked.ranks <= 20) and np.array_equal(a.targets, ml_small_split.valid[a.users])
    assert 0 < a.retriever_metrics["retriever_ndcg@10"] <= 1


def test_each_task_gets_its_in_training_evaluator(ml_small_split, retriever):
    from llmrec.finetune.evaluation import LikelihoodEvaluator
    from llmrec.finetune.run import _evaluator

    listwise = FinetuneConfig(eval_steps=10, save_steps=10, eval_users=8)
    got = _evaluator(listwise, ml_small_split, retriever, "listwise")
    assert type(got) is RankingEvaluator and len(got.users) == 8
    history = FinetuneConfig(
        task="history", loss="vocab", label_logits_only=False, eval_steps=10, save_steps=10, eval_users=8
    )
    got = _evaluator(history, ml_small_split, retriever, None)
    assert isinstance(got, LikelihoodEvaluator) and got.params.header == history.history_header
    assert _evaluator(FinetuneConfig(eval_users=0), ml_small_split, retriever, "listwise") is None


def test_last_checkpoint_skips_incomplete_ones(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"


# --- real training on CPU --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, ml_small_split, retriever, smollm_tokenizer):
    """24 users' tiny examples on disk (4 candidates, ~200-token prompts)."""
    renderer = PromptRenderer(PromptTemplate.load("listwise"), smollm_tokenizer, TINY["max_prompt_tokens"])
    users = sample_users(ml_small_split, 24, seed=0)
    ds = build_examples(
        ml_small_split,
        None,
        retriever,
        renderer,
        users=users,
        num_candidates=TINY["num_candidates"],
        progress=False,
    )
    folder = tmp_path_factory.mktemp("tiny") / "data"
    ds.save_to_disk(str(folder))
    return folder


def _write_config(path: Path, model: Path, output_dir: Path) -> Path:
    """A `llmrec finetune` run on 24 users' tiny examples (4 candidates, ~200-token prompts)."""
    config = FinetuneConfig(
        model=str(model),
        dataset="ml-latest-small",
        retriever="popularity",  # hard negatives without fitting the fused retriever
        train_users=24,
        template="listwise",  # labels A-D are single SmolLM2 tokens (checked before training)
        output_dir=str(output_dir),
        max_steps=6,
        save_steps=2,
        logging_steps=1,
        per_device_train_batch_size=2,
        threads=1,
        seed=11,
        **TINY,
    )
    config.to_json(path)  # JSON is YAML: every key a FinetuneConfig field
    return path


def _train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llmrec.cli", "finetune", "--config", str(config), *extra]


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, smollm_dir):
    """A complete 6-step QLoRA run (checkpoints every 2 steps) of `llmrec finetune` in a subprocess."""
    root = tmp_path_factory.mktemp("full")
    config = _write_config(root / "run.yaml", smollm_dir, root / "run")
    subprocess.run(_train_cmd(config), check=True, env=TRAIN_ENV, cwd=REPO, timeout=400)
    return root / "run"


@pytest.mark.slow
def test_qlora_run_on_cpu_trains_the_lora_weights(uninterrupted):
    import torch

    from llmrec.llm.models import resolve_dtype

    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    metrics = manifest["metrics"]
    # float32, or bfloat16 on CPUs with native bf16 (AVX512-BF16/AMX)
    assert manifest["quantization"] == "4bit" and manifest["dtype"] == resolve_dtype("auto", "cpu")
    assert metrics["global_step"] == 6 and len(metrics["loss_history"]) == 6
    assert all(math.isfinite(loss) for _, loss in metrics["loss_history"])
    assert metrics["tokens_per_second"] > 0 and manifest["data"]["examples"] == 24
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes"} <= set(manifest["versions"])
    config = json.loads((uninterrupted / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    final = _adapter_tensors(uninterrupted / "adapter")
    early = _adapter_tensors(uninterrupted / "checkpoints" / "checkpoint-2")
    assert len(final) == 4 * 30  # A and B of q_proj and v_proj in each of the 30 layers
    for name, tensor in final.items():
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
        assert not torch.equal(tensor, early[name]), f"{name} did not change after step 2"
        if "lora_B" in name:
            assert tensor.abs().sum() > 0  # LoRA B starts at zero
    assert not [p.name for p in uninterrupted.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.slow
def test_adapter_loads_in_the_transformers_backend(uninterrupted, smollm_dir, smollm_backend):
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    tuned = TransformersBackend(
        TransformersConfig(model=str(smollm_dir), adapter=str(uninterrupted / "adapter"), device="cpu")
    )
    renderer = PromptRenderer(PromptTemplate.load("listwise"), tuned.tokenizer, 200)
    prompt = renderer.render(
        ["Toy Story (1995)", "Shrek (2001)"], ["Heat (1995)", "Up (2009)", "Fargo (1996)"]
    )
    ids = label_token_ids(tuned.tokenizer, ["A", "B", "C"])
    with_adapter = tuned.label_logprobs([prompt], ids)
    base = smollm_backend.label_logprobs([prompt], ids)
    assert np.isfinite(with_adapter).all() and not np.allclose(with_adapter, base, atol=1e-4)


@pytest.mark.slow
def test_kill_and_resume_ends_like_an_uninterrupted_run(tmp_path, smollm_dir, uninterrupted):
    import torch

    config = _write_config(tmp_path / "run.yaml", smollm_dir, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    proc = subprocess.Popen(
        _train_cmd(config),
        env=TRAIN_ENV,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while last_checkpoint(checkpoints) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert last_checkpoint(checkpoints).name in ("checkpoint-2", "checkpoint-4")
    assert not (tmp_path / "run" / "adapter").exists()

    subprocess.run(_train_cmd(config, "--resume"), check=True, env=TRAIN_ENV, cwd=REPO, timeout=400)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumed_from"] and manifest["metrics"]["global_step"] == 6
    resumed, reference = (
        _adapter_tensors(tmp_path / "run" / "adapter"),
        _adapter_tensors(uninterrupted / "adapter"),
    )
    assert resumed.keys() == reference.keys()
    for name in reference:  # bit-identical on CPU (same threads, RNG state restored from the checkpoint)
        assert torch.equal(resumed[name], reference[name]), name
    reference_losses = json.loads((uninterrupted / "manifest.json").read_text())["metrics"]["loss_history"]
    assert manifest["metrics"]["loss_history"] == reference_losses


@pytest.mark.slow
def test_validation_ranking_keeps_the_best_checkpoint_and_stops_early(
    tmp_path, tiny_data, smollm_dir, ml_small_split, retriever
):
    from datasets import Dataset

    evaluator = RankingEvaluator(ml_small_split, retriever, users=4, seed=0, **TINY)
    scripted = iter([0.30, 0.50, 0.40, 0.45, 0.90, 0.90])
    seen = []

    def eval_fn(backend):  # the real reranker path over the in-training model, scripted NDCG@10
        metrics = evaluator(backend)
        seen.append(metrics)
        return {**metrics, "ndcg@10": next(scripted)}

    config = FinetuneConfig(
        model=str(smollm_dir),
        output_dir=str(tmp_path / "run"),
        max_steps=6,
        eval_steps=1,
        save_steps=1,
        early_stopping_patience=2,
        per_device_train_batch_size=1,
        logging_steps=1,
        threads=1,
        **TINY,
    )
    adapter = finetune(config, Dataset.load_from_disk(str(tiny_data)), eval_fn)
    metrics = json.loads((tmp_path / "run" / "manifest.json").read_text())["metrics"]
    assert metrics["global_step"] == 4  # 0.40 and 0.45 do not beat 0.50: patience 2 runs out
    assert metrics["best_step"] == 2 and metrics["best_ndcg@10"] == 0.50
    assert [e["step"] for e in metrics["eval_history"]] == [1, 2, 3, 4]
    assert all(0 <= m["recall@10"] <= 1 and math.isfinite(m["retriever_ndcg@10"]) for m in seen)
    best = _adapter_tensors(tmp_path / "run" / "checkpoints" / "checkpoint-2")
    final = _adapter_tensors(adapter)
    assert all(np.array_equal(final[k].numpy(), best[k].numpy()) for k in best)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--quantization", "none", "--dtype", "float32", "--loss", "labels"]])
def test_finetune_cli_end_to_end(tmp_path, ml_small_dir, smollm_dir, extra):
    """`llmrec finetune` wires data -> retriever -> examples -> QLoRA (or LoRA on a plain
    base with the label softmax) -> adapter + manifest."""
    from click.testing import CliRunner

    from llmrec.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "num_candidates: 4\nmax_prompt_tokens: 256\nper_device_train_batch_size: 2\n"
        "eval_users: 0\nsave_steps: 1\nthreads: 1\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--config",
            str(recipe),
            "--dataset",
            str(ml_small_dir),
            "--model",
            str(smollm_dir),
            "--train-users",
            "4",
            "--max-steps",
            "1",
            "--output-dir",
            str(out),
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["train_users"] == 4
    assert manifest["config"]["loss"] == ("labels" if extra else "vocab")
    assert (out / "adapter" / "adapter_config.json").exists()


def test_label_loss_over_the_vocabulary_or_the_label_tokens_matches_a_hand_computation():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmrec.finetune.trainer import label_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()
    ids = torch.tensor([[5, 6, 7, 31], [8, 9, 33, 0]])  # labels: 31 and 33 (second row padded)
    labels = torch.tensor([[-100, -100, -100, 31], [-100, -100, 33, -100]])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "labels": labels,
    }
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=inputs["attention_mask"]).logits
        at = torch.stack([logits[0, 2], logits[1, 1]])  # the positions that predict the labels
        vocab, _, _ = label_loss(model, inputs)
        want = -torch.log_softmax(at, -1)[[0, 1], [31, 33]].mean()
        assert torch.allclose(vocab, want, atol=1e-5)
        label_ids = [30, 31, 32, 33]
        restricted, picked, targets = label_loss(model, inputs, label_ids=label_ids)
        want = -torch.log_softmax(at[:, label_ids], -1)[[0, 1], [1, 3]].mean()
        assert torch.allclose(restricted, want, atol=1e-5) and targets.tolist() == [1, 3]
        assert picked.shape == (2, 4) and restricted < vocab  # fewer competitors, lower loss
