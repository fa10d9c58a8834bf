"""How far do the cold-start generators go? A grid, chosen on validation, read on test.

Cold-start users of a cross-domain suite (``eval/arts-office.yaml``) have only their source
history; every target-domain item is ranked for them by the cross-domain generators. This
script fits a grid of settings of ``cross-userknn`` (neighbour recency and similarity power),
``cross-ease`` (ridge penalty) and their weighted fusion with popularity on the *validation*
stage (generators fit without the validation items) and on the test stage, and reports for
every setting candidate Recall@20 and NDCG@10 of the cold users on both stages, the test
numbers with 95% bootstrap CIs and the paired difference to popularity. The setting with the
best validation Recall@20 is marked: that is the honest test number of a search over this
grid; the best *test* number is reported beside it and is not a result, only an upper bound
of what the grid holds.

    python eval/exp_cold.py eval/arts-office.yaml --out eval/reports/cold-grid-arts-office.json

CPU numpy / scipy only: 18 minutes for both directions on 2 cores (AMD EPYC), most of it fitting
``cross-ease`` per setting and stage.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmrec.candidates import CandidateGenerator, TrainData
from llmrec.candidates.crossdomain import CrossDomainEASEGenerator, CrossDomainUserKNNGenerator
from llmrec.candidates.fusion import FusedGenerator
from llmrec.candidates.popularity import PopularityGenerator
from llmrec.data import cross_domain_split
from llmrec.data.split import CrossDomainSplit
from llmrec.evaluation.metrics import ndcg_at_k, recall_at_k
from llmrec.evaluation.retrieval import rank_methods
from llmrec.evaluation.stats import bootstrap_indices, mean_ci, paired_difference
from llmrec.evaluation.suite import load_suite
from llmrec.io import atomic_write_json, atomic_write_text
from llmrec.pipeline import prepare_data


def grid() -> dict[str, Callable[[], CandidateGenerator]]:
    """Setting name -> a fresh, unfitted generator."""
    out: dict[str, Callable[[], CandidateGenerator]] = {"popularity": PopularityGenerator}
    for decay in (0.8, 0.9, 1.0):
        for power in (0.25, 0.5, 1.0):
            out[f"cross-userknn decay={decay:g} power={power:g}"] = lambda d=decay, p=power: (
                CrossDomainUserKNNGenerator(recency_decay=d, similarity_power=p)
            )
    for l2 in (100.0, 500.0, 2000.0):
        out[f"cross-ease l2={l2:g}"] = lambda l2=l2: CrossDomainEASEGenerator(l2=l2)
    for w_ease in (0.0, 0.125, 0.5):
        for w_pop in (0.0, 0.1, 0.25):
            if w_ease == w_pop == 0.0:
                continue  # that is cross-userknn alone
            out[f"fusion: cross-userknn + {w_ease:g} cross-ease + {w_pop:g} popularity"] = (
                lambda we=w_ease, wp=w_pop: FusedGenerator(
                    [CrossDomainUserKNNGenerator(), CrossDomainEASEGenerator(), PopularityGenerator()],
                    weights=[1.0, we, wp],
                )
            )
    return out


def cold_ranks(cd: CrossDomainSplit, stage: str, settings: dict) -> dict[str, np.ndarray]:
    """Setting -> 1-based rank of each cold user's held-out target item at ``stage``."""
    train = TrainData(cd.catalog, cd.fit_sequences(stage))
    users = cd.users("cold", stage)
    histories = cd.histories("cold", stage, users)
    targets = cd.target_split.target(stage)[users]
    generators = {name: make().fit(train) for name, make in settings.items()}
    ranked = rank_methods(generators, histories, targets, cd.catalog.domain_mask(cd.target))
    return {name: r.ranks for name, r in ranked.items()}


def direction(config, data, settings: dict) -> dict:
    """The grid on one source -> target run: per setting, both stages' numbers."""
    cd = cross_domain_split(
        data, config.source, config.target, config.cold_fraction, config.seed, config.order
    )
    ranks = {stage: cold_ranks(cd, stage, settings) for stage in ("valid", "test")}
    test_pop = ranks["test"]["popularity"]
    idx = bootstrap_indices(len(test_pop), config.bootstrap, config.seed)
    rows = {}
    for name in settings:
        v, t = ranks["valid"][name], ranks["test"][name]
        rows[name] = {
            "valid": {
                "recall@20": float(recall_at_k(v, 20).mean()),
                "ndcg@10": float(ndcg_at_k(v, 10).mean()),
            },
            "test": {
                "recall@20": mean_ci(recall_at_k(t, 20), idx),
                "ndcg@10": mean_ci(ndcg_at_k(t, 10), idx),
                "recall@20 vs popularity": paired_difference(
                    recall_at_k(t, 20), recall_at_k(test_pop, 20), idx
                ),
                "ndcg@10 vs popularity": paired_difference(ndcg_at_k(t, 10), ndcg_at_k(test_pop, 10), idx),
            },
        }
    chosen = max(settings, key=lambda n: (rows[n]["valid"]["recall@20"], rows[n]["valid"]["ndcg@10"]))
    best_test = max(settings, key=lambda n: rows[n]["test"]["recall@20"][0])
    return {
        "users": {"valid": len(ranks["valid"]["popularity"]), "test": len(test_pop)},
        "chosen_on_validation": chosen,
        "best_on_test": best_test,
        "rows": rows,
    }


def markdown(results: dict) -> str:
    """One table per direction."""
    out = []
    for run, res in results["runs"].items():
        out.append(
            f"Cold-start users of {run} ({res['users']['valid']} validation, {res['users']['test']} test): "
            f"each setting fit on the validation stage and on the test stage. Marked: chosen on "
            f"validation Recall@20 (the honest test number); `(best on test)` is an upper bound only.\n"
        )
        out.append(
            "| setting | valid R@20 | valid NDCG@10 | test R@20 [95% CI] | test NDCG@10 [95% CI] | "
            "test NDCG@10 vs popularity [95% CI] |"
        )
        out.append("|---|---:|---:|---:|---:|---:|")
        for name, row in res["rows"].items():
            mark = " **(chosen on validation)**" if name == res["chosen_on_validation"] else ""
            mark += " (best on test)" if name == res["best_on_test"] else ""
            r, n, d = row["test"]["recall@20"], row["test"]["ndcg@10"], row["test"]["ndcg@10 vs popularity"]
            diff = f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"
            if d[1] > 0 or d[2] < 0:
                diff = f"**{diff}**"
            out.append(
                f"| {name}{mark} | {row['valid']['recall@20']:.4f} | {row['valid']['ndcg@10']:.4f} | "
                f"{r[0]:.4f} [{r[1]:.4f}, {r[2]:.4f}] | {n[0]:.4f} [{n[1]:.4f}, {n[2]:.4f}] | {diff} |"
            )
        out.append("")
    out.append("Bold difference: the paired 95% CI excludes 0.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="a cross-domain suite (source / target runs)")
    parser.add_argument("--out", type=Path, default=Path("eval/results/cold-grid.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    suite = load_suite(args.suite)
    settings = grid()
    results: dict = {"suite": str(args.suite), "runs": {}}
    data = None
    for run_name, config in suite.run_configs():
        if config.source is None:
            continue
        data = data if data is not None else prepare_data(config)
        results["runs"][run_name] = direction(config, data, settings)
    if not results["runs"]:
        raise SystemExit(f"{args.suite} has no cross-domain run (source / target)")
    results["seconds"] = round(time.perf_counter() - start, 1)
    text = markdown(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, results)
    atomic_write_text(args.out.with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
