"""Which lever moves the LLM stage? One table, validation and test, each against the retriever.

Every row is one setting of the levers of the reranking stage on ml-latest-small (LlamaRec's
protocol, all users): evidence in the prompt (off / on), training (zero-shot / LoRA-tuned),
how the LLM's scores are combined with the retriever (alone / fixed score fusion / a learned
listwise combiner over the retriever's components, with or without sequential transitions,
with the LLM's listwise scores, its title likelihood, or both beside the history LM's
likelihood), the base model, and the retriever whose
top-20 is reranked (fused, or the sequential fused-seq). Each row gets NDCG@10 with its 95%
bootstrap CI and the paired difference against that retriever, on the validation stage
(second-to-last item; generators fit without it) and on the test stage (last item). Fusion
weights and combiner weights are fit on validation, so their validation numbers are in-sample
(marked); the test numbers are not.

    python eval/ablation.py --out eval/reports/ablation-ml-latest-small.json
    python eval/ablation.py --only-suites ml-latest-small-seq \
        --out eval/reports/ablation-ml-latest-small-seq.json  # the fused-seq rows alone
    python eval/ablation.py --only-suites ml-latest-small-history \
        --out eval/reports/ablation-ml-latest-small-history.json  # the history LM's rows
    python eval/ablation.py --only-suites ml-latest-small-gemma \
        --out eval/reports/ablation-ml-latest-small-gemma.json  # Gemma-3-270M's rows
    python eval/ablation.py --only-suites ml-latest-small-seeds \
        --out eval/reports/ablation-ml-latest-small-seeds.json  # two seeds and their mean
    python eval/ablation.py --only-suites --item-token-reports \
        eval/reports/item-tokens{,-seed1,-seed2}-ml-latest-small.json \
        --out eval/reports/ablation-item-tokens-ml-latest-small.json  # the item-token LM, from its reports

Fitted generators, candidate lists and LLM scores come from the evaluation cache that the
suites named below fill (`llmrec evaluate eval/<suite>.yaml`); a missing piece is computed.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from exp_combiner import MOVIES_HEADER, load_likelihood, stage_features

from llmrec.data import leave_one_out
from llmrec.evaluation.cache import data_fingerprint
from llmrec.evaluation.combiner import combined_ranks, fit_best
from llmrec.evaluation.experiment import EvalRun, open_cache
from llmrec.evaluation.llm_stage import choose_weight, versus_retriever
from llmrec.evaluation.metrics import ndcg_at_k
from llmrec.evaluation.suite import load_suite
from llmrec.io import atomic_write_json, atomic_write_text
from llmrec.pipeline import prepare_data

COMPONENTS = ["position", "bm25", "itemknn", "mf", "ease", "popularity"]
FUSION_WEIGHTS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf]


@dataclass(frozen=True)
class Row:
    """One setting of the levers: which suite's reranker, and how its scores are used."""

    evidence: str
    training: str
    combiner: str  # "alone" | "score fusion" | "learned" | "learned, no LLM"
    base: str
    suite: str
    reranker: str


SEQ = "ml-latest-small-seq"
SEQ_TUNED = "SmolLM2-135M evidence tuned on fused-seq"
LIKELIHOOD_MODEL = "smollm2-135m-instruct"
HIST = "ml-latest-small-history"
HIST_TUNED = "SmolLM2-135M history LM"
HIST_ZERO = "SmolLM2-135M likelihood zero-shot"
BOTH = "both LLMs"
"""Combiner rows over the row's reranker's scores and a second reranker's (``llm_pmi``)."""
GEMMA = "ml-latest-small-gemma"
GEMMA_TUNED = "Gemma-3-270M evidence tuned on fused-seq"
GEMMA_MEAN = "Gemma-3-270M + SmolLM2-135M (mean)"
"""The Gemma suite's ensemble entry: mean log-softmax of its two adapters' scores, nothing fit."""
SECOND = {HIST: HIST_TUNED, GEMMA: SEQ_TUNED}
"""The second reranker of a suite's both-LLM rows."""
SEEDS = "ml-latest-small-seeds"
SEED1 = "SmolLM2-135M evidence tuned on fused-seq, seed 1"
SEEDS_MEAN = "SmolLM2-135M evidence seeds 0+1 (mean)"

ROWS = [
    Row("off", "zero-shot", "alone", "SmolLM2-135M", "ml-latest-small", "SmolLM2-135M zero-shot"),
    Row("off", "zero-shot", "score fusion", "SmolLM2-135M", "ml-latest-small", "SmolLM2-135M zero-shot"),
    Row("off", "zero-shot", "learned", "SmolLM2-135M", "ml-latest-small", "SmolLM2-135M zero-shot"),
    Row(
        "on",
        "zero-shot",
        "alone",
        "SmolLM2-135M",
        "ml-latest-small-evidence",
        "SmolLM2-135M evidence zero-shot",
    ),
    Row(
        "on", "LoRA tuned", "alone", "SmolLM2-135M", "ml-latest-small-evidence", "SmolLM2-135M evidence tuned"
    ),
    Row(
        "on",
        "LoRA tuned",
        "score fusion",
        "SmolLM2-135M",
        "ml-latest-small-evidence",
        "SmolLM2-135M evidence tuned",
    ),
    Row(
        "on",
        "LoRA tuned",
        "learned",
        "SmolLM2-135M",
        "ml-latest-small-evidence",
        "SmolLM2-135M evidence tuned",
    ),
    Row(
        "on", "zero-shot", "alone", "Qwen2.5-0.5B", "ml-latest-small-qwen", "Qwen2.5-0.5B evidence zero-shot"
    ),
    Row(
        "on",
        "zero-shot",
        "score fusion",
        "Qwen2.5-0.5B",
        "ml-latest-small-qwen",
        "Qwen2.5-0.5B evidence zero-shot",
    ),
    Row(
        "on",
        "zero-shot",
        "learned",
        "Qwen2.5-0.5B",
        "ml-latest-small-qwen",
        "Qwen2.5-0.5B evidence zero-shot",
    ),
    Row("-", "-", "learned, no LLM", "-", "ml-latest-small", "SmolLM2-135M zero-shot"),
    # The same combiner with one more feature: sequential transitions (llmrec.candidates.transition).
    Row(
        "off",
        "zero-shot",
        "learned + transitions",
        "SmolLM2-135M",
        "ml-latest-small",
        "SmolLM2-135M zero-shot",
    ),
    Row(
        "on",
        "LoRA tuned",
        "learned + transitions",
        "SmolLM2-135M",
        "ml-latest-small-evidence",
        "SmolLM2-135M evidence tuned",
    ),
    Row(
        "on",
        "zero-shot",
        "learned + transitions",
        "Qwen2.5-0.5B",
        "ml-latest-small-qwen",
        "Qwen2.5-0.5B evidence zero-shot",
    ),
    Row("-", "-", "learned + transitions, no LLM", "-", "ml-latest-small", "SmolLM2-135M zero-shot"),
    # The sequential retriever (fused-seq: fused + transitions) and what reranks it: the evidence
    # adapter tuned on its lists, and the LLM's title likelihood (llmrec.llm.likelihood), which
    # cannot see the list's order, as a combiner feature in place of the listwise scores.
    Row("off", "zero-shot", "alone", "SmolLM2-135M", SEQ, "SmolLM2-135M zero-shot"),
    Row("on", "LoRA tuned", "alone", "SmolLM2-135M", SEQ, SEQ_TUNED),
    Row("on", "LoRA tuned", "score fusion", "SmolLM2-135M", SEQ, SEQ_TUNED),
    Row("on", "LoRA tuned", "learned + transitions", "SmolLM2-135M", SEQ, SEQ_TUNED),
    Row("off", "zero-shot", "learned + transitions + title likelihood", "SmolLM2-135M", SEQ, SEQ_TUNED),
    Row("-", "-", "learned + transitions, no LLM", "-", SEQ, SEQ_TUNED),
    # The history LM (finetune/history-ml-latest-small.yaml): the LLM tuned on users' title
    # sequences, each candidate scored by its likelihood given the history (no list shown), alone,
    # fused, and beside the listwise evidence adapter (both LLM readings in one combiner).
    Row("off", "zero-shot likelihood", "alone", "SmolLM2-135M", HIST, HIST_ZERO),
    Row("off", "zero-shot likelihood", "score fusion", "SmolLM2-135M", HIST, HIST_ZERO),
    Row("off", "history LM", "alone", "SmolLM2-135M", HIST, HIST_TUNED),
    Row("off", "history LM", "score fusion", "SmolLM2-135M", HIST, HIST_TUNED),
    Row("off", "history LM", "learned + transitions", "SmolLM2-135M", HIST, HIST_TUNED),
    Row("on", "LoRA tuned + history LM", "learned: order + both LLMs", "SmolLM2-135M", HIST, SEQ_TUNED),
    Row(
        "on",
        "LoRA tuned + history LM",
        "learned + transitions + both LLMs",
        "SmolLM2-135M",
        HIST,
        SEQ_TUNED,
    ),
    # A second base (finetune/evidence-seq-gemma-ml-latest-small.yaml): the same recipe on
    # Gemma-3-270M, alone, fused, in the combiner, and averaged with the SmolLM2 adapter (the
    # suite's ensemble entry: two listwise readings of one list, nothing fit), or both in the
    # learned combiner.
    Row("on", "LoRA tuned", "alone", "Gemma-3-270M", GEMMA, GEMMA_TUNED),
    Row("on", "LoRA tuned", "score fusion", "Gemma-3-270M", GEMMA, GEMMA_TUNED),
    Row("on", "LoRA tuned", "learned + transitions", "Gemma-3-270M", GEMMA, GEMMA_TUNED),
    Row("on", "LoRA tuned", "alone", "Gemma-3-270M + SmolLM2-135M", GEMMA, GEMMA_MEAN),
    Row("on", "LoRA tuned", "score fusion", "Gemma-3-270M + SmolLM2-135M", GEMMA, GEMMA_MEAN),
    Row("on", "LoRA tuned", "learned: order + both LLMs", "Gemma-3-270M + SmolLM2-135M", GEMMA, GEMMA_TUNED),
    # The same recipe on SmolLM2-135M with another seed (other windows, order, LoRA init), and
    # the two seeds' ensemble (the suite's ensemble entry: mean log-softmax, nothing fit).
    Row("on", "LoRA tuned, seed 1", "alone", "SmolLM2-135M", SEEDS, SEED1),
    Row("on", "LoRA tuned, seed 1", "score fusion", "SmolLM2-135M", SEEDS, SEED1),
    Row("on", "LoRA tuned, seeds 0+1 (mean)", "alone", "SmolLM2-135M", SEEDS, SEEDS_MEAN),
    Row("on", "LoRA tuned, seeds 0+1 (mean)", "score fusion", "SmolLM2-135M", SEEDS, SEEDS_MEAN),
    Row("on", "LoRA tuned, seeds 0+1 (mean)", "learned + transitions", "SmolLM2-135M", SEEDS, SEEDS_MEAN),
]


def row_ranks(
    row: Row, valid: dict, test: dict, penalties: list[float]
) -> tuple[np.ndarray, np.ndarray, str]:
    """Every user's rank on validation and on test under ``row``, and what was fit on validation."""
    if row.combiner == "alone":
        return (
            valid["scored"].ranks(valid["ranked"], valid["targets"]).ranks,
            test["scored"].ranks(test["ranked"], test["targets"]).ranks,
            "",
        )
    if row.combiner == "score fusion":
        w, _ = choose_weight(valid["scored"], valid["ranked"], valid["targets"], FUSION_WEIGHTS)
        return (
            valid["scored"].ranks(valid["ranked"], valid["targets"], w).ranks,
            test["scored"].ranks(test["ranked"], test["targets"], w).ranks,
            f"w={w:g}",
        )
    if row.combiner.endswith(BOTH):
        first = ["position"] if "order" in row.combiner else [*COMPONENTS, "transition"]
        names = [*first, "llm", "llm_pmi"]
        _, l2, w = fit_best(valid, names, penalties)
        return combined_ranks(valid, names, w), combined_ranks(test, names, w), f"l2={l2:g}"
    names = COMPONENTS + (["transition"] if "transitions" in row.combiner else [])
    if not row.combiner.endswith("no LLM"):
        names += ["llm_pmi" if "likelihood" in row.combiner else "llm"]
    _, l2, w = fit_best(valid, names, penalties)
    return combined_ranks(valid, names, w), combined_ranks(test, names, w), f"l2={l2:g}"


def item_token_rows(path: Path) -> list[dict]:
    """The rows of an ``eval/exp_item_tokens.py`` report (each model alone and fused with the
    retriever order) in this table's form; its epoch and weight were chosen on validation."""
    import json

    report = json.loads(path.read_text(encoding="utf-8"))
    if "evaluation" not in report or "training" not in report:
        raise SystemExit(f"--item-token-reports {path}: not a report of eval/exp_item_tokens.py")
    args = report["args"]
    refit = ", test-stage refit" if args.get("refit_of") else ""
    out = []
    for model, ev in report["evaluation"].items():
        for combiner in ("alone", "score fusion"):
            # what validation chose: "best epoch (5)" -> "epoch 5", "mean of epochs 5-9" -> "epochs 5-9"
            chosen = re.match(r"best epoch \((\d+)\)|mean of (epochs \d+-\d+)", model)
            fitted = (chosen[2] or f"epoch {chosen[1]}") if chosen else model
            if combiner == "score fusion":
                fitted += f", w={ev['fusion_weight']:g}"
            row = Row("-", f"item-token LM, seed {args['seed']}{refit}", combiner, "SmolLM2-135M", "", model)
            out.append(
                {
                    "row": row.__dict__,
                    "retriever": "fused-seq",
                    "fit_on_validation": fitted,
                    "valid": ev["rows"][f"{combiner}, valid"],
                    "test": ev["rows"][f"{combiner}, test"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", type=Path, default=Path("eval"), help="folder holding the suite files")
    parser.add_argument("--out", type=Path, default=Path("eval/reports/ablation-ml-latest-small.json"))
    parser.add_argument("--l2", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--bases", nargs="+", help="only the rows of these base models (and the no-LLM row)")
    parser.add_argument(
        "--only-suites",
        nargs="*",
        help="only the rows of these suites (names, no .yaml; none: no suite rows)",
    )
    parser.add_argument(
        "--item-token-reports",
        nargs="+",
        type=Path,
        default=[],
        help="eval/exp_item_tokens.py reports whose rows follow the suites' (read, not recomputed)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    stages: dict[tuple[str, str], tuple[dict, dict]] = {}
    base: dict[tuple[str, str], np.ndarray] = {}
    retriever: dict[tuple[str, str], str] = {}
    likelihood = None
    results = []
    for row in ROWS:
        if args.bases and row.base not in (*args.bases, "-"):
            continue
        if args.only_suites is not None and row.suite not in args.only_suites:
            continue
        if (row.suite, row.reranker) not in stages:
            suite = load_suite(args.suites / f"{row.suite}.yaml")
            ((_, config),) = suite.run_configs()[:1]
            data = prepare_data(config)
            run = EvalRun(config, open_cache(config), data_fingerprint(data), {})
            split = leave_one_out(data, order=config.order)
            users = split.eval_users("test")
            reranker = next(r for r in run.rerankers if r[0] == row.reranker)
            same = [r for r in ROWS if (r.suite, r.reranker) == (row.suite, row.reranker)]
            needs_likelihood = any("likelihood" in r.combiner for r in same)
            if needs_likelihood and likelihood is None:
                likelihood = load_likelihood(LIKELIHOOD_MODEL, MOVIES_HEADER)
            lk = likelihood if needs_likelihood else None
            if any(r.combiner.endswith(BOTH) for r in same):  # the second's suite scores
                lk = next(r for r in run.rerankers if r[0] == SECOND[row.suite])
            stages[(row.suite, row.reranker)] = (
                stage_features(run, split, users, "valid", reranker, 20, likelihood=lk),
                stage_features(run, split, users, "test", reranker, 20, likelihood=lk),
            )
            retriever[(row.suite, row.reranker)] = config.retriever
            seed, resamples = config.seed, config.bootstrap
        valid, test = stages[(row.suite, row.reranker)]
        v_ranks, t_ranks, fitted = row_ranks(row, valid, test, args.l2)
        name = retriever[(row.suite, row.reranker)]
        out = {"row": row.__dict__, "retriever": name, "fit_on_validation": fitted}
        for stage, data_, ranks in (("valid", valid, v_ranks), ("test", test, t_ranks)):
            ref = ndcg_at_k(data_["ranked"].ranks, 10)
            if (name, stage) in base:  # suites with one retriever share its ranks: check, not assume
                assert np.array_equal(base[(name, stage)], ref), f"{row.suite}: another {name} on {stage}"
            base[(name, stage)] = ref
            out[stage] = versus_retriever(ranks, data_["ranked"].ranks, len(data_["sel"]), resamples, seed)
        results.append(out)
    for path in args.item_token_reports:
        results += item_token_rows(path)
    if not results:
        raise SystemExit("no rows: name suites (--only-suites) or --item-token-reports")

    def cell(r: dict, stage: str, in_sample: bool) -> list[str]:
        m, lo, hi = r[stage]["ndcg@10"]
        d, dlo, dhi, _ = r[stage]["diff_vs_retriever"]
        bold = "**" if dlo > 0 or dhi < 0 else ""
        mark = " (fit here)" if in_sample else ""
        return [f"{m:.4f} [{lo:.4f}, {hi:.4f}]{mark}", f"{bold}{d:+.4f}{bold} [{dlo:+.4f}, {dhi:+.4f}]"]

    first = results[0]
    by_retriever: dict[str, dict] = {}
    for r in results:
        by_retriever.setdefault(r["retriever"], r)
    retrievers = ", ".join(
        f"{name} validation {r['valid']['retriever_ndcg@10'][0]:.4f}, "
        f"test {r['test']['retriever_ndcg@10'][0]:.4f}"
        for name, r in by_retriever.items()
    )
    lines = [
        f"Levers of the LLM stage on ml-latest-small, all users (validation {first['valid']['users']}, "
        f"test {first['test']['users']}); each row against the retriever whose top-20 it reranks, "
        f"NDCG@10: {retrievers}.",
        "",
        "| retriever | evidence | training | combination | base model | valid NDCG@10 [95% CI] "
        "| valid diff vs retriever | test NDCG@10 [95% CI] | test diff vs retriever [95% CI] |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        row = r["row"]
        combination = row["combiner"] + (f" ({r['fit_on_validation']})" if r["fit_on_validation"] else "")
        in_sample = bool(r["fit_on_validation"])
        cells = [r["retriever"], row["evidence"], row["training"], combination, row["base"]]
        cells += cell(r, "valid", in_sample) + cell(r, "test", False)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bold: the paired 95% CI excludes 0. `(fit here)`: weights chosen on these users."]
    table = "\n".join(lines)
    print(table)
    atomic_write_json(args.out, {"rows": results, "seconds": round(time.perf_counter() - start, 1)})
    atomic_write_text(args.out.with_suffix(".md"), table + "\n")
    print(f"written: {args.out}, {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
