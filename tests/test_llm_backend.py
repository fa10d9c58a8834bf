"""transformers backend: model resolution, bitsandbytes loading, PEFT adapters, the pipeline."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from llmrec.errors import LlmrecError
from llmrec.llm.models import resolve_dtype, resolve_model
from llmrec.llm.reranker import LLMReranker, RerankParams
from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

PROMPT_HIST = [["Toy Story (1995)", "Finding Nemo (2003)"]]
PROMPT_CANDS = [["Heat (1995)", "Toy Story 2 (1999)", "Casino (1995)"]]


def test_model_resolution(tmp_path, smollm_dir):
    assert resolve_model("smollm2-135m-instruct") == str(smollm_dir)
    assert resolve_model(str(smollm_dir)) == str(smollm_dir)
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # Hub ids pass through
    with pytest.raises(LlmrecError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(LlmrecError, match="neither"):
        resolve_model("not-a-model")


def test_prepared_model_is_reused(smollm_dir):
    from llmrec.llm.models import prepare_offline_model

    before = (smollm_dir / "model.safetensors").stat().st_mtime_ns
    assert prepare_offline_model() == smollm_dir
    assert (smollm_dir / "model.safetensors").stat().st_mtime_ns == before


def test_dtype_auto():
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cpu") in ("bfloat16", "float32")
    assert resolve_dtype("float16", "cpu") == "float16"


def test_cuda_request_without_gpu_is_clear(smollm_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(LlmrecError, match="CUDA"):
        TransformersBackend(TransformersConfig(model=str(smollm_dir), device="cuda"))


@pytest.mark.slow
def test_4bit_bitsandbytes_scores_like_full_precision(smollm_dir, smollm_backend):
    quant = TransformersBackend(TransformersConfig(model=str(smollm_dir), device="cpu", quantization="4bit"))
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quant.model.modules())
    full = LLMReranker(smollm_backend).score(PROMPT_HIST, PROMPT_CANDS, RerankParams(progress=False))[0]
    four = LLMReranker(quant).score(PROMPT_HIST, PROMPT_CANDS, RerankParams(progress=False))[0]
    assert np.isfinite(four).all()
    assert np.corrcoef(full, four)[0, 1] > 0.5  # NF4 perturbs, but keeps the signal


@pytest.mark.slow
def test_peft_adapter_is_applied(smollm_dir, smollm_backend, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(smollm_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned = TransformersBackend(
        TransformersConfig(model=str(smollm_dir), adapter=str(tmp_path / "adapter"), device="cpu")
    )
    base_scores = LLMReranker(smollm_backend).score(PROMPT_HIST, PROMPT_CANDS, RerankParams(progress=False))[
        0
    ]
    tuned_scores = LLMReranker(tuned).score(PROMPT_HIST, PROMPT_CANDS, RerankParams(progress=False))[0]
    assert not np.allclose(base_scores, tuned_scores, atol=1e-3)


def test_recommend_cli_known_and_new_user(ml_small_dir, smollm_dir):
    from llmrec.cli import app

    runner = CliRunner()
    known = runner.invoke(
        app, ["recommend", str(ml_small_dir), "--user", "1", "--n", "5", "--model", str(smollm_dir), "--json"]
    )
    assert known.exit_code == 0, known.output
    payload = json.loads(known.stdout)
    assert len(payload["items"]) == 5
    assert len({r["item_id"] for r in payload["items"]}) == 5
    assert payload["model"] == str(smollm_dir)
    assert all(1 <= r["retriever_rank"] <= 20 for r in payload["items"])
    typed = runner.invoke(
        app,
        [
            "recommend",
            str(ml_small_dir),
            "--history",
            "Toy Story; Shrek; Some film not in the catalog",
            "--n",
            "5",
            "--model",
            str(smollm_dir),
            "--json",
        ],
    )
    assert typed.exit_code == 0, typed.output
    payload = json.loads(typed.stdout)
    assert "Some film not in the catalog" in payload["history"]
    titles = [r["title"] for r in payload["items"]]
    assert "Toy Story (1995)" not in titles and len(titles) == 5


def _rerank_report(ml_small_dir, smollm_dir, **fields) -> dict:
    """itemknn top-20 of 25 sampled ml-latest-small users, reranked by the offline model."""
    from llmrec.evaluation.experiment import EvalConfig, run_evaluation

    cfg = EvalConfig(
        dataset=str(ml_small_dir),
        methods=["itemknn"],
        retriever="itemknn",
        rerank=True,
        model=str(smollm_dir),
        max_users=25,
        seed=1,
        **fields,
    )
    return run_evaluation(cfg)


def test_evaluate_with_rerank_combines_groups(ml_small_dir, smollm_dir):
    report = _rerank_report(ml_small_dir, smollm_dir)
    group = report["groups"]["all"]
    row = next(iter(group["rerank"]["rows"].values()))
    retr = group["methods"]["itemknn"]
    assert group["users"] == 25 and group["eligible_users"] == 610
    assert row["retrieved_users"] == round(retr["candidate_recall"]["@20"] * 25)
    # users outside the retrieved subset keep their ranks: recall@20 cannot change
    assert row["metrics"]["recall@20"] == pytest.approx(retr["metrics"]["recall@20"])
    assert "rerank" in report["protocol"] and "sample" in report["protocol"]
    llm_vs_retriever = [c for c in report["comparisons"] if c["baseline"] == "itemknn"]
    assert {c["method"] for c in llm_vs_retriever} == set(group["rerank"]["rows"])


def test_evaluate_fusion_weight_is_chosen_on_validation(ml_small_dir, smollm_dir):
    report = _rerank_report(ml_small_dir, smollm_dir, fusion_weights=[1.0, 1000.0])
    rr = report["groups"]["all"]["rerank"]
    fusion = next(iter(rr["fusion"].values()))
    table = fusion["validation_ndcg@10"]
    assert set(table) == {"0", "1", "1000", "inf"}
    # the chosen weight is the validation argmax (ties to the smaller weight)
    assert table[f"{float(fusion['chosen_weight']):g}"] == max(table.values())
    # a huge weight reproduces the retriever's order on validation
    assert table["1000"] == pytest.approx(fusion["validation_retriever_ndcg@10"], abs=1e-4)
    assert table["inf"] == pytest.approx(fusion["validation_retriever_ndcg@10"], abs=1e-12)
    fused = [r for r in rr["rows"].values() if "retriever_weight" in r]
    assert len(fused) == 1 and fused[0]["retriever_weight"] == fusion["chosen_weight"]


def test_recommender_ranks_given_candidates_and_fuses_in_one_place(ml_small_split, smollm_backend):
    """The one ranking path: a caller's candidate lists are reordered (never changed) by the
    LLM; an infinite retriever weight gives back the retriever's order exactly."""
    from llmrec.candidates import TrainData, make_generator
    from llmrec.pipeline import Recommender

    split = ml_small_split
    retriever = make_generator("itemknn").fit(TrainData(split.catalog, split.sequences("test")))
    rec = Recommender(retriever, LLMReranker(smollm_backend, "listwise_compact"), num_candidates=8)
    histories = split.histories("test", np.arange(3))
    given = rec.retrieve(histories)
    params = RerankParams(progress=False)
    ranking = rec.rank(histories, candidates=given, params=params)
    for u in range(3):
        assert sorted(ranking.items[u]) == sorted(given.items[u])
        assert (given.items[u][ranking.retriever_ranks[u] - 1] == ranking.items[u]).all()
        assert (np.diff(ranking.scores[u]) <= 0).all()
    assert not (ranking.items == given.items).all(), "the LLM changed no order at all"
    rec.retriever_weight = float("inf")
    assert (rec.rank(histories, candidates=given, params=params).items == given.items).all()


def _fake_distribution(root, name: str, relpath: str, payload: bytes) -> None:
    """An installed-looking distribution ``name`` (dist-info + one data file) under ``root``."""
    dist = root / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (root / relpath).parent.mkdir(parents=True, exist_ok=True)
    (root / relpath).write_bytes(payload)


def test_offline_model_missing_part_names_package_and_install(tmp_path, monkeypatch):
    from llmrec.llm import models

    spec = models.OfflineModel(
        (("no-such-part-pkg", "x/part01.bin"),), "Nothing", "pip install no-such-part-pkg"
    )
    monkeypatch.setitem(models.OFFLINE_MODELS, "nothing", spec)
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path))
    with pytest.raises(LlmrecError, match="no-such-part-pkg.*pip install no-such-part-pkg"):
        models.resolve_model("nothing")
    assert not (tmp_path / "models" / "Nothing").exists()


@pytest.mark.slow
def test_offline_model_in_parts_is_joined_and_converted(tmp_path, monkeypatch, smollm_dir):
    """A GGUF shipped in two packages (the real default model, cut in half) prepares into the
    same weights as the one-file package."""
    import importlib.metadata

    import torch
    from safetensors.torch import load_file

    from llmrec.llm import models

    package, relpath = models.OFFLINE_MODELS[models.DEFAULT_MODEL].parts[0]
    gguf = importlib.metadata.distribution(package).locate_file(relpath).read_bytes()
    half = len(gguf) // 2
    site = tmp_path / "site"
    _fake_distribution(site, "split-part1", "split_part1/data/part01.bin", gguf[:half])
    _fake_distribution(site, "split-part2", "split_part2/data/part02.bin", gguf[half:])
    monkeypatch.syspath_prepend(str(site))
    parts = (("split-part1", "split_part1/data/part01.bin"), ("split-part2", "split_part2/data/part02.bin"))
    monkeypatch.setitem(models.OFFLINE_MODELS, "split", models.OfflineModel(parts, "Split", "-"))
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path / "cache"))
    folder = models.prepare_offline_model("split")
    assert folder == tmp_path / "cache" / "models" / "Split"
    assert not list(folder.glob("*.gguf"))  # the joined file is not kept
    ours, reference = load_file(folder / "model.safetensors"), load_file(smollm_dir / "model.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_threads_apply_while_the_backend_computes_and_are_restored_after(smollm_dir):
    import torch

    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig, torch_threads

    before = torch.get_num_threads()
    one = TransformersBackend(TransformersConfig(model=str(smollm_dir), device="cpu", threads=1))
    assert torch.get_num_threads() == before  # loading sets nothing process-wide
    seen = []
    forward = one.model.forward

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return forward(*args, **kwargs)

    one.model.forward = spy
    one.label_logprobs(["Pick one: A or B? Answer:"], [one.tokenizer.encode(" A")[0]])
    assert seen == [1] and torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("flag", [True, False, None])
def test_gguf_bos_flag_is_read(tmp_path, flag):
    """The converted tokenizer adds <bos> exactly when the GGUF asks for it (Gemma does)."""
    import gguf

    from llmrec.llm.models import gguf_adds_bos

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    if flag is not None:
        writer.add_add_bos_token(flag)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_adds_bos(path) is bool(flag)
