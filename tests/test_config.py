"""Typed configs: one default per setting, YAML < typed flags, coercion, adapter manifests."""

import json
import warnings

import pytest
from click.testing import CliRunner

from llmrec.cli import app
from llmrec.config import ModelConfig, RecommendConfig, load_config
from llmrec.errors import ConfigError, LlmrecWarning
from llmrec.evaluation.config import EvalConfig
from llmrec.finetune.config import FinetuneConfig


def test_shared_settings_have_one_default_everywhere():
    for cls in (EvalConfig, FinetuneConfig, RecommendConfig):
        cfg = cls()
        assert (cfg.dataset, cfg.k_core, cfg.num_candidates, cfg.retriever) == (
            "ml-latest-small",
            5,
            20,
            "fused",
        )
    assert FinetuneConfig().quantization == "4bit" and EvalConfig().quantization == "none"


def test_yaml_values_are_coerced_or_refused_with_the_field_named(tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text("learning_rate: 5e-4\nmax_steps: '2'\ntarget_modules: q_proj,v_proj\n")
    cfg = load_config(FinetuneConfig, recipe)
    assert cfg.learning_rate == 5e-4 and cfg.max_steps == 2 and cfg.target_modules == ["q_proj", "v_proj"]
    recipe.write_text("lora_r: eight\n")
    with pytest.raises(ConfigError, match="lora_r"):
        load_config(FinetuneConfig, recipe)
    recipe.write_text("backend: tensorflow\n")
    with pytest.raises(ConfigError, match="backend.*transformers, vllm, vllm-server"):
        load_config(EvalConfig, recipe)
    recipe.write_text("no_such_setting: 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_config(EvalConfig, recipe)


def test_old_setting_names_still_work_with_a_warning(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("n_candidates: 12\ndomain: office\ncold_start_source: arts\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(FinetuneConfig, recipe)
    assert (cfg.num_candidates, cfg.target, cfg.source) == (12, "office", "arts")
    assert any(issubclass(w.category, LlmrecWarning) and "num_candidates" in str(w.message) for w in caught)


def test_typed_flags_override_the_yaml_and_untyped_defaults_do_not(ml_small_dir, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("methods: [popularity, bm25]\nnum_candidates: 7\nks: [10]\nseed: 3\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["evaluate", str(ml_small_dir), "--config", str(suite), "--num-candidates", "5", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["methods"] == ["popularity", "bm25"]  # from the file: the --methods default did not win
    assert config["num_candidates"] == 5  # typed
    assert config["ks"] == [10] and config["seed"] == 3


def _fake_run(tmp_path, base="smollm2-135m-instruct", template="listwise_compact", budget=640):
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    manifest = {"base_model": base, "template": template, "config": {"max_prompt_tokens": budget}}
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    return adapter


def test_an_adapter_supplies_its_settings_unless_they_are_given(tmp_path):
    adapter = _fake_run(tmp_path)
    cfg = ModelConfig(adapter=str(adapter))
    assert (cfg.template, cfg.max_prompt_tokens) == ("listwise_compact", 640)
    given = ModelConfig(adapter=str(adapter), template="pointwise", max_prompt_tokens=300)
    assert (given.template, given.max_prompt_tokens) == ("pointwise", 300)


def test_an_adapter_tuned_on_another_base_is_refused(tmp_path):
    adapter = _fake_run(tmp_path, base="Qwen/Qwen2.5-0.5B-Instruct")
    assert ModelConfig(adapter=str(adapter)).model == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(ConfigError, match="Qwen/Qwen2.5-0.5B-Instruct"):
        ModelConfig(adapter=str(adapter), model="HuggingFaceTB/SmolLM2-360M-Instruct")
