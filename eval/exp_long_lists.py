"""The item-token LM reranking longer retriever lists: fused-seq's top-K for K in 20, 50, 100.

Reranking the top-20 can only reorder what the retriever found (fused-seq's Recall@20 is
0.22); a next-item model as good as the item-token LM (``eval/exp_item_tokens.py``, NDCG@10
against all items near EASE's) may also lift items the retriever ranked 21st to 100th. This
reads a finished run's per-epoch catalog scores (``RUN_DIR/epoch-scores/``, nothing is
retrained) and reorders each user's fused-seq top-K by
:func:`llmrec.pipeline.fuse_with_retriever` (the LM's log-softmax over the list plus ``w`` times
a Zipf prior on the retriever's position); users whose held-out item is below K keep the
retriever's rank.

Chosen on validation over all users (NDCG@10, ties to the smaller K, the larger ``w``, the
earlier epoch): the epoch, K and ``w`` of the primary row; K and ``w`` of the secondary row,
the mean log-softmax of the epochs from ``--ensemble-from`` on (fixed in advance). Test is
then read once, each row against fused-seq by a paired bootstrap over all users.

    python eval/exp_long_lists.py --run-dir runs/item-tokens-seed2-ml-latest-small \\
        --out eval/reports/long-lists-seed2-ml-latest-small.json
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from bench_train import cpu_name  # eval/ scripts beside this one
from exp_item_tokens import (
    SUITE,
    epoch_scores_path,
    list_scores,
    load_catalog_scores,
    stage_lists,
    write_report,
)

import llmrec.pipeline as pipeline
from llmrec.data import leave_one_out
from llmrec.evaluation.cache import data_fingerprint
from llmrec.evaluation.experiment import EvalRun, StageLists, open_cache
from llmrec.evaluation.llm_stage import mean_log_softmax_rows, versus_retriever
from llmrec.evaluation.metrics import ndcg_at_k
from llmrec.evaluation.report import diff_cell
from llmrec.evaluation.retrieval import RankedUsers
from llmrec.evaluation.suite import load_suite

LENGTHS = (20, 50, 100)
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
Scores = dict[str, np.ndarray]  # stage -> catalog scores, one row per stage user


def suite_runs(suite: str) -> tuple[Any, Any, EvalRun, EvalRun]:
    """The suite's config and split, its own run (top-20 lists) and the same run with lists of
    ``max(LENGTHS)`` (one cache)."""
    ((_, config),) = load_suite(suite).run_configs()[:1]
    data = pipeline.prepare_data(config)
    split = leave_one_out(data, order=config.order)
    base = EvalRun(config, open_cache(config), data_fingerprint(data), {})
    long = EvalRun(dataclasses.replace(config, num_candidates=max(LENGTHS)), base.cache, base.fingerprint, {})
    return config, split, base, long


def truncated(lists: StageLists, k: int) -> StageLists:
    """The same stage with the retriever's lists cut to their first ``k`` items (the ranks of
    the held-out items, against all items, do not change)."""
    r = lists.ranked
    return dataclasses.replace(lists, ranked=RankedUsers(r.ranks, r.candidates[:, :k], r.fallback, r.seconds))


def final_ranks(logits: np.ndarray, lists: StageLists, weight: float) -> np.ndarray:
    """Every user's rank of the held-out item after the LM reorders the list (retriever's rank
    for the users whose item is not in it)."""
    return list_scores(logits, 0.0, lists).ranks(lists.ranked, lists.targets, weight).ranks


def grid(logits: np.ndarray, lists: dict[int, StageLists]) -> dict[tuple[int, float], float]:
    """NDCG@10 of every (K, w) on one stage."""
    return {
        (k, w): float(ndcg_at_k(final_ranks(logits, lists[k], w), 10).mean())
        for k in sorted(lists)
        for w in FUSION_WEIGHTS
    }


def best_choice(tables: dict[Any, dict[tuple[int, float], float]]) -> tuple[Any, int, float]:
    """The (model, K, w) of the best validation NDCG@10; ties to the smaller K, the larger w,
    the earlier model (insertion order)."""
    order = {m: i for i, m in enumerate(tables)}
    cells = [(round(v, 12), -k, w, -order[m], m) for m, t in tables.items() for (k, w), v in t.items()]
    _, neg_k, w, _, m = max(cells)
    return m, -neg_k, w


def load_epochs(run_dir: Path, stages: dict[str, StageLists]) -> list[Scores]:
    """Every finished epoch's catalog scores (epochs 0, 1, ... while their files exist)."""
    out: list[Scores] = []
    while (s := load_catalog_scores(epoch_scores_path(run_dir, len(out)), stages)) is not None:
        out.append({stage: v[0] for stage, v in s.items()})
    if not out:
        raise SystemExit(f"{run_dir / 'epoch-scores'}: no epoch's catalog scores for these users")
    return out


def row(
    name: str,
    scores: Scores,
    k: int,
    w: float,
    lists: dict[str, dict[int, StageLists]],
    boot: tuple[int, int],
) -> dict[str, Any]:
    """One reranking's validation and test numbers against fused-seq."""
    out: dict[str, Any] = {"name": name, "k": k, "weight": w}
    for s, by_k in lists.items():
        ranks = final_ranks(scores[s], by_k[k], w)
        retrieved = int((by_k[k].ranked.ranks <= k).sum())
        out[s] = versus_retriever(ranks, by_k[k].ranked.ranks, retrieved, *boot)
    return out


def markdown(result: dict[str, Any]) -> str:
    """The report: each row against fused-seq on validation and test, then the validation grid."""
    lines = [
        f"Item-token LM ({result['run_dir']}, {result['epochs']} epochs) reranking fused-seq's top-K, "
        f"all {result['users']} users; K, the fusion weight w and (primary row) the epoch chosen on "
        "validation NDCG@10 over all users; fused-seq: validation "
        f"{result['retriever_ndcg@10']['valid']:.4f}, test {result['retriever_ndcg@10']['test']:.4f}.",
        "",
        "| row | K | w | users in the top-K (valid / test) | valid NDCG@10 | valid diff vs fused-seq "
        "[95% CI] | test NDCG@10 [95% CI] | test diff vs fused-seq [95% CI] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        v, t = r["valid"], r["test"]
        nd = t["ndcg@10"]
        lines.append(
            f"| {r['name']} | {r['k']} | {r['weight']:g} | {v['retrieved']} / {t['retrieved']} | "
            f"{v['ndcg@10'][0]:.4f} | {diff_cell(v['diff_vs_retriever'])} | "
            f"{nd[0]:.4f} [{nd[1]:.4f}, {nd[2]:.4f}] | {diff_cell(t['diff_vs_retriever'])} |"
        )
    lines += [
        "",
        "Validation NDCG@10 of every K and w for the primary row's model (the grid it was chosen from):",
        "",
        "| K | " + " | ".join(f"w={w:g}" for w in FUSION_WEIGHTS) + " |",
        "|---:|" + "---:|" * len(FUSION_WEIGHTS),
    ]
    table = result["valid_grid"]
    for k in LENGTHS:
        lines.append(f"| {k} | " + " | ".join(f"{table[f'{k},{w:g}']:.4f}" for w in FUSION_WEIGHTS) + " |")
    lines += [
        "",
        "Bold: the paired CI excludes 0. Validation's differences are in-sample (it chose K, w and the "
        f"epoch); test's are not. {result['cpu']}.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="an exp_item_tokens.py run (its epoch-scores/)"
    )
    parser.add_argument("--out", type=Path, required=True, help="report JSON (a .md beside it)")
    parser.add_argument("--suite", default=SUITE, help="the suite whose fused-seq lists the run scored")
    parser.add_argument(
        "--ensemble-from", type=int, default=4, help="the secondary row: mean of the epochs from this one on"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config, split, base, long = suite_runs(args.suite)
    lists: dict[str, dict[int, StageLists]] = {}
    for s in ("valid", "test"):
        full = stage_lists(long, split, s)
        suite_lists = stage_lists(base, split, s)  # the suite's own top-20: the same order, cut
        if not np.array_equal(
            full.ranked.candidates[:, : config.num_candidates], suite_lists.ranked.candidates
        ):
            raise SystemExit(f"{s}: the top-{max(LENGTHS)} lists do not start with the suite's top-20")
        lists[s] = {k: truncated(full, k) for k in LENGTHS}
    stages = {s: by_k[max(LENGTHS)] for s, by_k in lists.items()}
    epochs = load_epochs(args.run_dir, stages)
    if len(epochs) <= args.ensemble_from:
        raise SystemExit(
            f"{args.run_dir}: {len(epochs)} epochs, none from --ensemble-from {args.ensemble_from}"
        )
    models = {f"epoch {e}": scores for e, scores in enumerate(epochs)}
    members = epochs[args.ensemble_from :]
    ensemble_name = f"mean of epochs {args.ensemble_from}-{len(epochs) - 1}"
    ensemble = {s: mean_log_softmax_rows([m[s] for m in members]) for s in stages}
    valid_tables = {m: grid(scores["valid"], lists["valid"]) for m, scores in models.items()}
    ens_table = grid(ensemble["valid"], lists["valid"])
    boot = (config.bootstrap, config.seed)
    chosen, k, w = best_choice(valid_tables)
    _, ek, ew = best_choice({ensemble_name: ens_table})
    rows = [
        row(f"{chosen}, primary: epoch, K and w chosen on validation", models[chosen], k, w, lists, boot),
        row(f"{ensemble_name}, secondary: K and w chosen on validation", ensemble, ek, ew, lists, boot),
    ]
    _, k20, w20 = best_choice({chosen: {c: v for c, v in valid_tables[chosen].items() if c[0] == 20}})
    rows.append(row(f"{chosen}, top-20 only (w chosen on validation)", models[chosen], k20, w20, lists, boot))
    result: dict[str, Any] = {
        "run_dir": str(args.run_dir),
        "suite": args.suite,
        "epochs": len(epochs),
        "users": len(split.eval_users("test")),
        "cpu": cpu_name(),
        "retriever_ndcg@10": {
            s: float(ndcg_at_k(by_k[20].ranked.ranks, 10).mean()) for s, by_k in lists.items()
        },
        "rows": rows,
        "valid_grid": {f"{kk},{ww:g}": v for (kk, ww), v in valid_tables[chosen].items()},
        "valid_grid_by_epoch": {
            m: {f"{kk},{ww:g}": v for (kk, ww), v in t.items()} for m, t in valid_tables.items()
        },
    }
    for r in rows:
        d = r["test"]["diff_vs_retriever"]
        print(
            f"{r['name']} (K={r['k']}, w={r['weight']:g}): "
            f"test vs fused-seq {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"
        )
    write_report(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
