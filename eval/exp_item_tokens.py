"""Item tokens: the LLM reads a history of item vectors and scores the next item (E4SRec-style), measured.

The text rerankers give SmolLM2 each item as its title; what the model knows of ~3,650 movies
from their titles is little (the likelihood and item-encoder rows of the README). Here each
item is one input vector instead of a title: a row of a learned item matrix initialised with
the mean of its title's token embeddings (what the LLM's own vocabulary says of the title),
normalised to a word embedding's norm. The LLM (LoRA on every linear layer) reads a user's
last ``--length`` items as those vectors, and its last hidden state scores every item by
cosine with the same (tied) matrix times a learned temperature: a next-item model with the
LLM as its sequence encoder, trained causally (every position predicts the next item, softmax
over the catalog) on every user's training part (``split.sequences("valid")``: never a held-out
item), in chunks of ``--length`` + 1.

Evaluation: the fused-seq top-20 of the suite (``eval/ml-latest-small-seeds.yaml``) on
validation and test, each list reordered by the model's scores of its candidates, alone and
fused with the retriever order (:func:`llmrec.pipeline.fuse_with_retriever`, weight chosen on
validation), against fused-seq by a paired bootstrap over all 610 users; the epoch is chosen on
validation too. Each epoch is checkpointed (``--run-dir``); ``--resume`` goes on from the last;
``--skip-training`` evaluates the best epoch a finished run left there (``best.pt``,
``training.json``). Every epoch's scores of the whole catalog for both stages' users are kept
(``epoch-scores/``): the report adds the mean of the last epochs' log-softmax scores (a snapshot
ensemble, the first epoch chosen on validation) beside the best epoch, and both models'
scores are left in ``--run-dir`` (``catalog-scores.npz``, ``catalog-scores-snapshots.npz``) as
a feature for ``eval/exp_combiner.py --item-token-scores``.

    python eval/exp_item_tokens.py --config finetune/item-tokens-ml-latest-small.yaml

``--refit-of RUN_DIR`` trains the test stage's model on the test stage's training part (the
validation items too, as fused-seq's generators are refit at test) with the same options,
keeps the epochs that RUN_DIR chose on validation, and scores test with it; validation keeps
RUN_DIR's scores, so the fusion weight and a combiner are still fit out of test:

    python eval/exp_item_tokens.py --config finetune/item-tokens-ml-latest-small.yaml \
        --refit-of runs/item-tokens-ml-latest-small --run-dir runs/item-tokens-refit-ml-latest-small \
        --out eval/reports/item-tokens-refit-ml-latest-small.json

The recipe (``--config``) sets these options; any given on the command line overrides it
(e.g. ``--seed 1 --run-dir runs/item-tokens-seed1-ml-latest-small``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_train import cpu_flags, cpu_name  # eval/ script beside this one
from tqdm.auto import tqdm

import llmrec.pipeline as pipeline
from llmrec.candidates.base import Candidates
from llmrec.data import leave_one_out
from llmrec.evaluation import experiment
from llmrec.evaluation.cache import data_fingerprint
from llmrec.evaluation.experiment import EvalRun, StageLists, open_cache
from llmrec.evaluation.llm_stage import RerankScores, choose_weight, mean_log_softmax_rows, versus_retriever
from llmrec.evaluation.metrics import ndcg_at_k
from llmrec.evaluation.report import diff_cell
from llmrec.evaluation.suite import load_suite
from llmrec.io import atomic_file, atomic_write_json, atomic_write_text
from llmrec.llm.models import load_tokenizer, resolve_model

SUITE = "eval/ml-latest-small-seeds.yaml"
MODEL = "smollm2-135m-instruct"
FUSION_WEIGHTS = [0.0, 0.25, 0.5, 1, 2, 4, 8, 16]
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def training_chunks(sequences: list[np.ndarray], length: int) -> list[np.ndarray]:
    """Each sequence cut from its end into pieces of ``length`` + 1 items that overlap by one
    (each item is a target once); pieces of fewer than 3 items are dropped."""
    out = []
    for seq in sequences:
        end = len(seq)
        while end >= 3:
            start = max(0, end - length - 1)
            out.append(seq[start:end])
            end = start + 1 if start > 0 else 0
    return out


def right_padded(rows: list[np.ndarray], value: int):
    """A ``len(rows) x longest`` LongTensor, each row left-aligned, ``value`` after it. Right
    padding needs no attention mask under causal attention: no real position sees a pad."""
    import torch

    arr = np.full((len(rows), max(len(r) for r in rows)), value, dtype=np.int64)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return torch.from_numpy(arr)


def title_vectors(embeddings, tokenizer, titles: list[str]):
    """Each title's mean token embedding scaled to the mean word-embedding norm, plus a zero
    row (padding)."""
    import torch

    emb = embeddings.detach().float()
    rows = []
    for title in titles:
        ids = tokenizer(title, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        rows.append(emb[ids].mean(0))
    out = torch.stack(rows)
    out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-6) * emb.norm(dim=1).mean()
    return torch.cat([out, torch.zeros(1, out.shape[1])])


def item_token_model(decoder, init):
    """The LLM's decoder stack over item vectors, scored by the tied item matrix."""
    import torch
    import torch.nn.functional as F

    class ItemTokenLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder
            self.items = torch.nn.Parameter(init.clone())  # n_items + 1 (padding) x hidden
            # Cosine logits, learned temperature: raw dot products of word-sized vectors are ~20x too large.
            self.log_scale = torch.nn.Parameter(torch.tensor(float(np.log(20.0))))

        @property
        def pad(self) -> int:
            return self.items.shape[0] - 1

        def hidden(self, seqs):
            # F.embedding, not indexing: its CPU backward sums repeated rows in a fixed order
            # (index_put accumulation does not), and the padding row gets no gradient.
            return self.decoder(
                inputs_embeds=F.embedding(seqs, self.items, padding_idx=self.pad)
            ).last_hidden_state

        def logits(self, h):
            e = F.normalize(self.items[:-1], dim=-1)
            return F.normalize(h, dim=-1) @ e.T * self.log_scale.exp()

        def last_hidden(self, histories: list[np.ndarray], length: int, batch: int = 64):
            out = []
            with torch.no_grad():
                for b in range(0, len(histories), batch):
                    rows = [h[-length:] for h in histories[b : b + batch]]
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        h = self.hidden(right_padded(rows, self.pad))
                    out.append(h[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])].float())
            return torch.cat(out)

    return ItemTokenLM()


def build_model(catalog_titles: list[str], rank: int, seed: int):
    """SmolLM2 with a seeded LoRA on every linear layer and the title-initialised item matrix."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    path = resolve_model(MODEL)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    init = title_vectors(lm.get_input_embeddings().weight, load_tokenizer(path), catalog_titles)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_MODULES)
    return item_token_model(get_peft_model(lm.model, lora), init)


def trained_state(model) -> dict:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if "lora" in k or k in ("items", "log_scale")
    }


def stage_lists(run: EvalRun, split, stage: str) -> StageLists:
    """The suite's retriever lists of ``stage`` for all test users (the suite's cache keys)."""
    return experiment.stage_lists(run, split, stage, split.eval_users("test"))


def stage_scores(model, lists: StageLists, length: int):
    """The model's scores of every item for each of the stage's users (one forward pass per
    user, read by both :func:`list_scores` and :func:`catalog_ndcg`) and the seconds it took."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        logits = model.logits(model.last_hidden([h.items for h in lists.histories], length)).numpy()
    return logits, time.perf_counter() - start


def list_scores(logits: np.ndarray, seconds: float, lists: StageLists) -> RerankScores:
    """The scores of each retrieved user's candidates (retriever order) out of the catalog
    scores of :func:`stage_scores`."""
    ranked = lists.ranked
    users = np.flatnonzero(ranked.ranks <= ranked.candidates.shape[1])
    items = ranked.candidates[users]
    s = np.take_along_axis(logits[users], np.maximum(items, 0), axis=1).astype(np.float32)
    cands = Candidates(items, np.zeros(items.shape, dtype=np.float32), ranked.fallback[users])
    return RerankScores(users, cands, list(s), seconds, len(users))


def catalog_ndcg(logits: np.ndarray, lists: StageLists) -> float:
    """NDCG@10 of the model alone against all items (history excluded): how good a next-item
    model it is, whatever the retriever."""
    logits = logits.copy()
    for r, h in enumerate(lists.histories):
        logits[r, h.items] = -np.inf
    t = lists.targets
    ranks = 1 + (logits > logits[np.arange(len(t)), t][:, None]).sum(1)
    return float(ndcg_at_k(ranks, 10).mean())


def validation_numbers(logits: np.ndarray, seconds: float, lists: StageLists) -> dict[str, float]:
    """NDCG@10 on the validation lists alone and fused (best weight), and against all items."""
    scored = list_scores(logits, seconds, lists)
    alone = scored.ranks(lists.ranked, lists.targets, 0.0).ranks
    w, table = choose_weight(scored, lists.ranked, lists.targets, FUSION_WEIGHTS)
    return {
        "valid_alone": float(ndcg_at_k(alone, 10).mean()),
        "valid_fused": table[w],
        "valid_weight": w,
        "valid_catalog_ndcg@10": catalog_ndcg(logits, lists),
    }


def validate(model, stages: dict[str, StageLists], length: int, path: Path) -> dict[str, float]:
    """An epoch's validation numbers; its catalog scores of every stage are saved to ``path``
    (for :func:`snapshot_ensemble`)."""
    logits = {s: stage_scores(model, lists, length) for s, lists in stages.items()}
    save_catalog_scores(path, logits, stages)
    return validation_numbers(*logits["valid"], stages["valid"])


def snapshot_ensemble(
    run_dir: Path, epochs: int, stages: dict[str, StageLists]
) -> tuple[int, dict[str, tuple[np.ndarray, float]]] | None:
    """The mean log-softmax catalog scores of epochs ``k`` to the last, ``k`` chosen on
    validation (fused NDCG@10): an ensemble of the run's own snapshots at no training cost.
    None when an epoch's scores are missing."""
    paths = [epoch_scores_path(run_dir, e) for e in range(epochs)]
    if not all(p.is_file() for p in paths):
        return None
    scores = []
    for p in paths:
        with np.load(p) as z:
            scores.append({s: z[s] for s in stages})
    best: tuple[float, int, dict] | None = None
    for k in range(epochs):
        mean = {s: (mean_log_softmax_rows([e[s] for e in scores[k:]]), 0.0) for s in stages}
        fused = validation_numbers(*mean["valid"], stages["valid"])["valid_fused"]
        if best is None or fused > best[0]:
            best = (fused, k, mean)
    assert best is not None
    return best[1], best[2]


def epoch_scores_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / "epoch-scores" / f"{epoch}.npz"


def validation_record(run_dir: Path, epochs: int) -> dict[str, Any]:
    """The training record of a finished validation run of ``epochs`` epochs (``--refit-of``)."""
    path = run_dir / "training.json"
    if not path.is_file():
        raise SystemExit(f"--refit-of {run_dir}: no training.json (a finished run of this script)")
    record = json.loads(path.read_text(encoding="utf-8"))
    if len(record["epochs"]) != epochs or "valid_fused" not in record["epochs"][0]:
        raise SystemExit(
            f"--refit-of {run_dir}: a validation run of {len(record['epochs'])} epochs; "
            f"the refit needs one of --epochs {epochs}"
        )
    return record


def refit_models(
    valid_run: Path, record: dict[str, Any], refit_run: Path, stages: dict[str, StageLists]
) -> dict[str, dict[str, tuple[np.ndarray, float]]]:
    """The validation run's scores on validation joined with the refit run's on test: for the
    validation run's best epoch and for its snapshot ensemble (the same epochs of the refit);
    ``record``: the validation run's :func:`validation_record`."""
    best, epochs = record["best_epoch"], len(record["epochs"])
    valid_only, test_only = {"valid": stages["valid"]}, {"test": stages["test"]}

    def refit_test(epoch: int) -> tuple[np.ndarray, float]:
        scores = load_catalog_scores(epoch_scores_path(refit_run, epoch), test_only)
        if scores is None:
            raise SystemExit(f"{epoch_scores_path(refit_run, epoch)}: missing or for other users")
        return scores["test"]

    valid = load_catalog_scores(epoch_scores_path(valid_run, best), valid_only)
    if valid is None:
        raise SystemExit(f"{epoch_scores_path(valid_run, best)}: missing or for other users")
    models = {f"best epoch ({best}), test-stage refit": {**valid, "test": refit_test(best)}}
    ensemble = snapshot_ensemble(valid_run, epochs, stages)
    if ensemble is not None:
        first, mean = ensemble
        test = mean_log_softmax_rows([refit_test(e)[0] for e in range(first, epochs)])
        models[f"mean of epochs {first}-{epochs - 1}, test-stage refit"] = {
            "valid": mean["valid"],
            "test": (test, 0.0),
        }
    return models


def score_test_stage(model, stages: dict[str, StageLists], length: int, path: Path) -> None:
    """A refit epoch's test-stage catalog scores, saved to ``path``; no validation numbers (the
    refit model trained on the validation items)."""
    save_catalog_scores(path, {"test": stage_scores(model, stages["test"], length)}, {"test": stages["test"]})


def train(args, split, stages: dict[str, StageLists], keep_epoch: int | None = None) -> tuple[Any, dict]:
    """Train (or resume) for ``args.epochs``; the model of the best validation epoch (fused
    NDCG@10 on the retriever's lists) and the training record. ``keep_epoch`` (a refit): train
    on the test stage's training part (the validation items too), keep that epoch's model and
    save each epoch's test-stage scores only (:func:`score_test_stage`)."""
    import torch

    torch.set_num_threads(2)
    model = build_model(split.catalog.titles, args.rank, args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    chunks = training_chunks(split.sequences("valid" if keep_epoch is None else "test"), args.length)
    per_epoch = -(-len(chunks) // args.batch)
    total = args.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / total)
    )
    ckpt = args.run_dir / "checkpoint.pt"
    record: dict[str, Any] = {
        "chunks": len(chunks),
        "target_items": sum(len(c) - 1 for c in chunks),
        "epochs": [],
    }
    best: tuple[float, int, dict] | None = None
    first = 0
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        record, best, first = state["record"], state["best"], state["epoch"] + 1
    rng = np.random.default_rng(args.seed)
    orders = [rng.permutation(len(chunks)) for _ in range(args.epochs)]  # resume-stable order
    start = time.perf_counter() - sum(e["seconds"] for e in record["epochs"])
    for epoch in range(first, args.epochs):
        t0, losses = time.perf_counter(), []
        order = orders[epoch]
        for b in tqdm(range(0, len(order), args.batch), desc=f"epoch {epoch}", mininterval=10):
            rows = [chunks[i] for i in order[b : b + args.batch]]
            x, y = right_padded([r[:-1] for r in rows], model.pad), right_padded([r[1:] for r in rows], -100)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model.logits(model.hidden(x))
            loss = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), y.flatten(), ignore_index=-100
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(seconds, 1)}
        row["target_items_per_second"] = round(record["target_items"] / seconds, 1)
        path = epoch_scores_path(args.run_dir, epoch)
        if keep_epoch is None:
            row.update(validate(model, stages, args.length, path))
        else:
            score_test_stage(model, stages, args.length, path)
        record["epochs"].append(row)
        print(json.dumps(row), flush=True)
        weights = trained_state(model)
        if keep_epoch is None and (best is None or row["valid_fused"] > best[0]):
            best = (row["valid_fused"], epoch, weights)
        elif keep_epoch == epoch:
            best = (0.0, epoch, weights)
        args.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"model": weights, "opt": opt.state_dict(), "sched": sched.state_dict()}
        torch.save({**state, "record": record, "best": best, "epoch": epoch}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)  # atomic: a stopped run resumes from the last whole epoch
    if best is None:
        raise SystemExit(f"{args.run_dir}: no epoch {keep_epoch} to keep in {args.epochs} epochs")
    model.load_state_dict(best[2], strict=False)
    record["best_epoch"] = best[1]
    record["seconds"] = round(time.perf_counter() - start, 1)
    torch.save(best[2], args.run_dir / "best.tmp")
    (args.run_dir / "best.tmp").replace(args.run_dir / "best.pt")
    atomic_write_json(args.run_dir / "training.json", record)
    return model, record


def trained(args, split) -> tuple[Any, dict]:
    """The best epoch's model and training record that :func:`train` left in ``--run-dir``."""
    import torch

    record = finished_record(args.run_dir, "best.pt")
    model = build_model(split.catalog.titles, args.rank, args.seed)
    model.load_state_dict(torch.load(args.run_dir / "best.pt", weights_only=True), strict=False)
    return model, record


def finished_record(run_dir: Path, *needed: str) -> dict[str, Any]:
    """The training record a finished run left in ``run_dir`` (``--skip-training``), which must
    hold the files ``needed`` too."""
    missing = [f for f in ("training.json", *needed) if not (run_dir / f).is_file()]
    if missing:
        raise SystemExit(
            f"--skip-training: {run_dir} has no {' or '.join(missing)} (no finished run there); "
            "train it first, without --skip-training (--resume goes on from its last epoch)"
        )
    return json.loads((run_dir / "training.json").read_text(encoding="utf-8"))


def evaluate(
    logits: dict[str, tuple[np.ndarray, float]], stages: dict[str, StageLists], resamples: int, seed: int
) -> dict[str, Any]:
    """Alone and fused with the retriever order (weight chosen on validation), both stages;
    ``logits``: each stage's :func:`stage_scores`."""
    scored = {s: list_scores(*logits[s], lists) for s, lists in stages.items()}
    v = stages["valid"]
    weight, table = choose_weight(scored["valid"], v.ranked, v.targets, FUSION_WEIGHTS)
    out: dict[str, Any] = {"fusion_weight": weight, "fusion_table_valid": table, "rows": {}}
    for label, w in (("alone", 0.0), ("score fusion", weight)):
        for s, lists in stages.items():
            ranks = scored[s].ranks(lists.ranked, lists.targets, w).ranks
            retrieved = len(scored[s].users)
            out["rows"][f"{label}, {s}"] = versus_retriever(
                ranks, lists.ranked.ranks, retrieved, resamples, seed
            )
    out["catalog_ndcg@10"] = {s: catalog_ndcg(logits[s][0], lists) for s, lists in stages.items()}
    return out


def evaluate_models(
    models: dict[str, dict[str, tuple[np.ndarray, float]]],
    stages: dict[str, StageLists],
    resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` for each named model's catalog scores."""
    return {name: evaluate(logits, stages, resamples, seed) for name, logits in models.items()}


def save_catalog_scores(path: Path, logits: dict[str, tuple[np.ndarray, float]], stages: dict) -> None:
    """Each stage's users (``<stage>_users``), their scores of every item (``<stage>``, one row
    per user) and the seconds these took (``<stage>_seconds``), written atomically."""
    arrays = {}
    for s, lists in stages.items():
        arrays[s] = logits[s][0].astype(np.float32)
        arrays[f"{s}_users"] = np.asarray(lists.users)
        arrays[f"{s}_seconds"] = np.float64(logits[s][1])
    # A file object, not a name: np.savez would append ".npz" to atomic_file's temporary name.
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_catalog_scores(
    path: Path, stages: dict[str, StageLists]
) -> dict[str, tuple[np.ndarray, float]] | None:
    """What :func:`save_catalog_scores` wrote to ``path``, as :func:`stage_scores` gives it; None
    when the file is missing or was written for other users."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        if not all(
            f"{s}_users" in z.files and np.array_equal(z[f"{s}_users"], lists.users)
            for s, lists in stages.items()
        ):
            return None
        return {s: (z[s], float(z[f"{s}_seconds"]) if f"{s}_seconds" in z.files else 0.0) for s in stages}


def write_report(out: Path, result: dict[str, Any], text: str) -> None:
    """The report's JSON at ``out`` and its Markdown beside it, each written atomically."""
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), text)


def markdown(result: dict[str, Any]) -> str:
    """The report's table: each row against fused-seq, validation and test."""
    tr = result["training"]
    lines = [
        f"Item-token LM (SmolLM2-135M + LoRA r={result['args']['rank']}, E4SRec-style) reranking "
        f"fused-seq's top-20, all users; epoch {tr['best_epoch']} of {len(tr['epochs'])} chosen on "
        f"validation; {result['cpu']}, {tr['seconds'] / 60:.0f} min of training.",
        "",
        "| row | valid NDCG@10 | valid diff vs fused-seq [95% CI] | test NDCG@10 [95% CI] "
        "| test diff vs fused-seq [95% CI] |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, ev in result["evaluation"].items():
        for label in ("alone", "score fusion"):
            v, t = ev["rows"][f"{label}, valid"], ev["rows"][f"{label}, test"]
            name = (
                f"{model}, alone"
                if label == "alone"
                else f"{model}, fused with retriever order (w={ev['fusion_weight']:g}, chosen on validation)"
            )
            t_nd = t["ndcg@10"]
            lines.append(
                f"| {name} | {v['ndcg@10'][0]:.4f} | {diff_cell(v['diff_vs_retriever'])} | "
                f"{t_nd[0]:.4f} [{t_nd[1]:.4f}, {t_nd[2]:.4f}] | {diff_cell(t['diff_vs_retriever'])} |"
            )
    if result["args"].get("refit_of"):
        lines += [
            "",
            f"Test-stage refit: test is scored by a model trained on the test stage's training part "
            f"(validation items included), at the epochs that {result['args']['refit_of']} chose on "
            "validation; validation keeps that run's scores.",
        ]
    lines += ["", "Alone against all items (no retriever), NDCG@10:"]
    for model, ev in result["evaluation"].items():
        cat = ev["catalog_ndcg@10"]
        lines.append(f"{model}: {cat['valid']:.4f} on validation, {cat['test']:.4f} on test.")
    lines += [
        "",
        "Bold: the paired CI excludes 0. Validation chose the epoch, the ensemble's first epoch and "
        "the fusion weight: its differences are in-sample, test's are not.",
        "",
    ]
    return "\n".join(lines)


def recipe_options(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The options a YAML recipe sets, each checked against ``parser``'s option of that name
    and converted by its type; an unknown name or a value of the wrong type stops with the file,
    key and value named."""
    import yaml

    if not path.is_file():
        raise SystemExit(f"--config {path}: no such file")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"--config {path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    options: dict[str, Any] = {}
    for key, value in values.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None:
            raise SystemExit(f"--config {path}: unknown key {key!r} (known: {', '.join(sorted(actions))})")
        if action.type is None and isinstance(action.const, bool):  # a store_true flag
            if not isinstance(value, bool):
                raise SystemExit(f"--config {path}: {key}: {value!r} is not true or false")
            options[action.dest] = value
            continue
        kind = action.type or str
        wrong = f"--config {path}: {key}: {value!r} is not {'an' if kind is int else 'a'} {kind.__name__}"
        if isinstance(value, (bool, dict, list)) or (kind is int and isinstance(value, float)):
            raise SystemExit(wrong)
        try:
            options[action.dest] = kind(str(value))
        except ValueError:
            raise SystemExit(wrong) from None
    return options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options: a ``--config`` recipe's values, overridden by those given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=SUITE)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--length", type=int, default=50, help="items per training chunk and history")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/item-tokens-ml-latest-small"))
    parser.add_argument("--resume", action="store_true", help="go on from --run-dir's last checkpoint")
    parser.add_argument(
        "--skip-training", action="store_true", help="evaluate the best epoch that training left in --run-dir"
    )
    parser.add_argument("--out", type=Path, default=Path("eval/results/item-tokens-ml-latest-small.json"))
    parser.add_argument(
        "--refit-of",
        type=Path,
        help="a finished run's --run-dir: train the test stage's model on the test stage's training "
        "part (validation items included) with the same options, and score test with it at that run's "
        "chosen epochs (validation keeps that run's scores)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="a recipe: YAML of these options (e.g. finetune/item-tokens-ml-latest-small.yaml); "
        "options given on the command line override it",
    )
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**recipe_options(parser, known.config))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = load_suite(args.suite)
    ((_, config),) = suite.run_configs()[:1]
    data = pipeline.prepare_data(config)
    run = EvalRun(config, open_cache(config), data_fingerprint(data), {})
    split = leave_one_out(data, order=config.order)
    stages = {s: stage_lists(run, split, s) for s in ("valid", "test")}
    if args.refit_of is not None:
        valid_record = validation_record(args.refit_of, args.epochs)
        if args.skip_training:
            record = finished_record(args.run_dir)
        else:
            _, record = train(args, split, stages, keep_epoch=valid_record["best_epoch"])
        models = refit_models(args.refit_of, valid_record, args.run_dir, stages)
    else:
        model, record = trained(args, split) if args.skip_training else train(args, split, stages)
        # The best epoch's scores were saved when it was validated; recomputed only if they are gone.
        logits = load_catalog_scores(epoch_scores_path(args.run_dir, record["best_epoch"]), stages)
        if logits is None:
            logits = {s: stage_scores(model, lists, args.length) for s, lists in stages.items()}
        models = {f"best epoch ({record['best_epoch']})": logits}
        ensemble = snapshot_ensemble(args.run_dir, len(record["epochs"]), stages)
        if ensemble is None:
            print(f"no snapshot ensemble: {args.run_dir / 'epoch-scores'} lacks an epoch's scores")
        else:
            first, mean = ensemble
            models[f"mean of epochs {first}-{len(record['epochs']) - 1}"] = mean
    # The catalog scores, for a combiner to read (eval/exp_combiner.py --item-token-scores).
    for logits, file in zip(models.values(), ("catalog-scores.npz", "catalog-scores-snapshots.npz")):
        save_catalog_scores(args.run_dir / file, logits, stages)
    result: dict[str, Any] = {
        "suite": args.suite,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpu": cpu_name(),
        "flags": cpu_flags(),
        "training": record,
        "evaluation": evaluate_models(models, stages, config.bootstrap, config.seed),
    }
    for model, ev in result["evaluation"].items():
        for name, row in ev["rows"].items():
            d = row["diff_vs_retriever"]
            print(
                f"{model}, {name}: NDCG@10 {row['ndcg@10'][0]:.4f}, "
                f"vs fused-seq {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"
            )
    write_report(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
