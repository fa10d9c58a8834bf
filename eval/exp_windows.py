"""Held-out windows: the item-token LM against fused-seq on each user's last five items, not one.

On the protocol's two held-out items every item-token LM fused with the retriever order is ahead
of fused-seq on validation (chosen there) and level on test. One stage of 610 users cannot say
whether that lead is selection and one stage's luck or a real gain too small for 610 users.
This script holds out more: the model (``eval/exp_item_tokens.py``'s recipe, ``--config``)
trains on every user's sequence without its last ``--windows`` items, and each of those items
is a held-out target in turn, ``b`` steps before the last (``b`` = windows-1 .. 0), ranked by
fused-seq fit on everything before it (``split.shifted(b)``'s test stage; ``b`` = 0 is the
protocol's test stage) and reordered by the LM. The earliest ``--select`` windows choose the
epoch, the list length K and the fusion weight w (mean NDCG@10 over them); the others are the
test: each user's mean NDCG@10 over the test windows against fused-seq's, paired bootstrap over
users. The LM never trains on a window's item, and its history at a later window holds the
earlier windows' items it has not trained on (the protocol's test stage has one such item;
a refit on it changed nothing, README).

    python eval/exp_windows.py --config finetune/item-tokens-ml-latest-small.yaml --epochs 8 \\
        --run-dir runs/windows-ml-latest-small --out eval/reports/windows-ml-latest-small.json

``--resume`` goes on from the last finished epoch; ``--skip-training`` reads the per-epoch scores
a run left in ``--run-dir`` (``epoch-scores/``) and writes the report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from bench_train import cpu_flags, cpu_name  # eval/ scripts beside this one
from exp_item_tokens import SUITE, catalog_ndcg, finished_record, recipe_options, train, write_report
from exp_long_lists import (
    FUSION_WEIGHTS,
    LENGTHS,
    best_choice,
    final_ranks,
    load_epochs,
    suite_runs,
    truncated,
)

from llmrec.evaluation.experiment import EvalRun, StageLists
from llmrec.evaluation.experiment import stage_lists as suite_stage_lists
from llmrec.evaluation.llm_stage import mean_log_softmax_rows
from llmrec.evaluation.metrics import ndcg_at_k
from llmrec.evaluation.report import diff_cell
from llmrec.evaluation.stats import bootstrap_indices, mean_ci, paired_difference
from llmrec.io import atomic_write_figure, atomic_write_json

Windows = dict[str, dict[int, StageLists]]  # window name -> K -> that window's lists cut to K


def window_name(back: int) -> str:
    """``n-1`` for the last item (the protocol's test item), ``n-2`` for the one before, ..."""
    return f"n-{back + 1}"


def window_lists(run: EvalRun, split, windows: int) -> Windows:
    """Every window's fused-seq top-``max(LENGTHS)`` lists of all users, cut to each K: the
    window ``b`` steps before the last item is ``split.shifted(b)``'s test stage, its generators
    fit on everything before its target (cached apart from the suite's own stages)."""
    users = np.arange(split.n_users)
    short = [u for u, seq in enumerate(split.full_sequences()) if len(seq) < windows + 2]
    if short:
        raise SystemExit(
            f"{len(short)} users have fewer than {windows + 2} items (the {windows} windows and 2 before "
            "them to train on): use fewer --windows"
        )
    out: Windows = {}
    for back in range(windows - 1, -1, -1):
        lists = suite_stage_lists(run, split.shifted(back), "test", users, window=back)
        out[window_name(back)] = {k: truncated(lists, k) for k in LENGTHS}
    return out


def training_split(split, windows: int):
    """The split whose training part (``sequences("valid")``) is every user's sequence without
    its last ``windows`` items: all the model may train on."""
    return split.shifted(windows - 2)


def same_windows(run_dir: Path, windows: int, select: int) -> None:
    """Record a run dir's ``--windows`` and ``--select`` (``windows.json``), or stop when it holds
    other ones: its saved scores are keyed by window position, so other windows would mislabel
    them, and another selection, chosen after reading test, would not be the one fixed for it."""
    path = run_dir / "windows.json"
    wanted = {"windows": windows, "select": select}
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != wanted:
            raise SystemExit(
                f"{path}: this run dir holds a run with --windows {found['windows']} --select "
                f"{found['select']}, not --windows {windows} --select {select}: "
                "use those or another --run-dir"
            )
        return
    atomic_write_json(path, wanted)


def training_stages(lists: Windows) -> dict[str, StageLists]:
    """The windows as :func:`exp_item_tokens.train` validates them each epoch: every window's
    top-20 (its catalog scores saved), the earliest named ``valid`` (its fused NDCG@10 logged and
    its best epoch kept as ``best.pt``; this script chooses from the saved scores instead)."""
    names = list(lists)
    return {("valid" if i == 0 else n): lists[n][min(LENGTHS)] for i, n in enumerate(names)}


def per_user_ndcg(logits: np.ndarray, lists: StageLists, weight: float) -> np.ndarray:
    """Each user's NDCG@10 of the held-out item after the LM reorders the list with ``weight``."""
    return ndcg_at_k(final_ranks(logits, lists, weight), 10)


def selection_table(
    scores: dict[str, np.ndarray], lists: Windows, select: list[str]
) -> dict[tuple[int, float], float]:
    """Mean NDCG@10 over the selection windows (each window's users' mean, then their mean) of
    every (K, w)."""
    return {
        (k, w): float(np.mean([per_user_ndcg(scores[n], lists[n][k], w).mean() for n in select]))
        for k in LENGTHS
        for w in FUSION_WEIGHTS
    }


def pooled_row(
    name: str,
    scores: dict[str, np.ndarray],
    k: int,
    w: float,
    lists: Windows,
    select: list[str],
    test: list[str],
    boot: tuple[int, int],
) -> dict[str, Any]:
    """One model's numbers at (K, w): the selection windows' mean, the test windows' per-user
    mean against fused-seq's (paired bootstrap over users), and each window alone."""
    per = {n: per_user_ndcg(scores[n], lists[n][k], w) for n in lists}
    ref = {n: ndcg_at_k(lists[n][k].ranked.ranks, 10) for n in lists}
    n_users = len(next(iter(per.values())))
    idx = bootstrap_indices(n_users, *boot)

    def pooled(names: list[str]) -> dict[str, Any]:
        a = np.mean([per[n] for n in names], axis=0)
        b = np.mean([ref[n] for n in names], axis=0)
        return {
            "ndcg@10": mean_ci(a, idx),
            "retriever_ndcg@10": mean_ci(b, idx),
            "diff_vs_retriever": paired_difference(a, b, idx),
        }

    return {
        "name": name,
        "k": k,
        "weight": w,
        "selection": pooled(select),
        "test": pooled(test),
        "windows": {n: pooled([n]) for n in lists},
    }


def ensemble_scores(epochs: list[dict[str, np.ndarray]], first: int) -> dict[str, np.ndarray]:
    """The mean log-softmax catalog scores of epochs ``first`` to the last, every window."""
    return {n: mean_log_softmax_rows([e[n] for e in epochs[first:]]) for n in epochs[0]}


def analyse(
    epochs: list[dict[str, np.ndarray]], lists: Windows, n_select: int, boot: tuple[int, int]
) -> dict[str, Any]:
    """The primary row (epoch, K, w chosen on the selection windows) and the secondary row (the
    snapshot ensemble: its first epoch, K and w chosen the same way), each tested once."""
    names = list(lists)
    select, test = names[:n_select], names[n_select:]
    tables = {e: selection_table(s, lists, select) for e, s in enumerate(epochs)}
    epoch, k, w = best_choice(tables)
    # One ensemble's scores at a time: each is every window's catalog scores.
    ens_tables = {f: selection_table(ensemble_scores(epochs, f), lists, select) for f in range(len(epochs))}
    first, ek, ew = best_choice(ens_tables)
    last = len(epochs) - 1
    rows = [
        pooled_row(f"epoch {epoch}, primary", epochs[epoch], k, w, lists, select, test, boot),
        pooled_row(
            f"mean of epochs {first}-{last}, secondary",
            ensemble_scores(epochs, first),
            ek,
            ew,
            lists,
            select,
            test,
            boot,
        ),
    ]
    return {
        "select_windows": select,
        "test_windows": test,
        "rows": rows,
        "selection_by_epoch": {str(e): max(t.values()) for e, t in tables.items()},
        "selection_grid": {f"{kk},{ww:g}": v for (kk, ww), v in tables[epoch].items()},
        "retriever_ndcg@10": {
            n: float(ndcg_at_k(lists[n][min(LENGTHS)].ranked.ranks, 10).mean()) for n in names
        },
        "catalog_ndcg@10": {n: catalog_ndcg(epochs[epoch][n], lists[n][min(LENGTHS)]) for n in names},
    }


def markdown(result: dict[str, Any]) -> str:
    """The report: the two tested rows, then every window on its own."""
    a = result["analysis"]
    sel, test = ", ".join(a["select_windows"]), ", ".join(a["test_windows"])
    lines = [
        f"Item-token LM ({result['epochs']} epochs, trained without each user's last "
        f"{len(a['select_windows']) + len(a['test_windows'])} items) reordering fused-seq's top-K, "
        f"{result['users']} users; epoch, K and w chosen on windows {sel} (mean NDCG@10), tested on "
        f"windows {test} (each user's mean NDCG@10, paired against fused-seq's); {result['cpu']}.",
        "",
        "| row | K | w | selection NDCG@10 (fused-seq) | test NDCG@10 [95% CI] | fused-seq "
        "| test diff vs fused-seq [95% CI] | p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in a["rows"]:
        s, t = r["selection"], r["test"]
        d = t["diff_vs_retriever"]
        lines.append(
            f"| {r['name']} | {r['k']} | {r['weight']:g} "
            f"| {s['ndcg@10'][0]:.4f} ({s['retriever_ndcg@10'][0]:.4f}) "
            f"| {t['ndcg@10'][0]:.4f} [{t['ndcg@10'][1]:.4f}, {t['ndcg@10'][2]:.4f}] "
            f"| {t['retriever_ndcg@10'][0]:.4f} | {diff_cell(d)} | {d[3]:.3f} |"
        )
    lines += [
        "",
        "Each window on its own (n-1: the protocol's test item, n-2 its validation item), the primary "
        "row's model, K and w; the LM alone against all items (history excluded):",
        "",
        "| window | role | fused-seq NDCG@10 | reranked NDCG@10 | diff vs fused-seq [95% CI] "
        "| LM alone, all items |",
        "|---|---|---:|---:|---:|---:|",
    ]
    primary = a["rows"][0]
    for n, row in primary["windows"].items():
        role = "selection" if n in a["select_windows"] else "test"
        lines.append(
            f"| {n} | {role} | {row['retriever_ndcg@10'][0]:.4f} | {row['ndcg@10'][0]:.4f} "
            f"| {diff_cell(row['diff_vs_retriever'])} | {a['catalog_ndcg@10'][n]:.4f} |"
        )
    lines += [
        "",
        "Bold: the paired CI excludes 0. The selection windows' numbers are in-sample (they chose "
        "epoch, K and w); the test windows' are not.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: Path) -> None:
    """Each window's paired difference against fused-seq with its 95% CI, both tested rows, the
    selection windows shaded, and the test windows' pooled difference beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = result["analysis"]
    names = [*a["select_windows"], *a["test_windows"], "test pooled"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.axvspan(-0.5, len(a["select_windows"]) - 0.5, color="0.9", label="selection windows")
    for i, r in enumerate(a["rows"]):
        cells = [r["windows"][n]["diff_vs_retriever"] for n in names[:-1]] + [r["test"]["diff_vs_retriever"]]
        x = np.arange(len(names)) + (i - 0.5) * 0.2
        mean = np.array([c[0] for c in cells])
        err = np.array([[c[0] - c[1] for c in cells], [c[2] - c[0] for c in cells]])
        ax.errorbar(
            x, mean, yerr=err, fmt="o", capsize=3, label=f"{r['name']} (K={r['k']}, w={r['weight']:g})"
        )
    ax.axhline(0, color="grey", ls="--")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("NDCG@10 difference vs fused-seq (95% CI)")
    ax.set_title("Item-token LM reranking fused-seq, per held-out window", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_figure(out, fig)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """exp_item_tokens' options (a ``--config`` recipe, overridden on the command line) and the windows'."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=SUITE)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=5, help="held-out items per user (the last ones)")
    parser.add_argument(
        "--select", type=int, default=2, help="the earliest windows, which choose epoch, K, w"
    )
    parser.add_argument("--run-dir", type=Path, default=Path("runs/windows-ml-latest-small"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--skip-training", action="store_true", help="report from --run-dir's epoch scores")
    parser.add_argument("--out", type=Path, default=Path("eval/results/windows-ml-latest-small.json"))
    parser.add_argument(
        "--config", type=Path, help="an exp_item_tokens recipe (YAML); the command line overrides it"
    )
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        recipe = recipe_options(parser, known.config)
        for key in ("run_dir", "out"):  # the recipe's are exp_item_tokens' own files
            recipe.pop(key, None)
        parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    if not 0 < args.select < args.windows:
        parser.error(f"--select {args.select} must be at least 1 and below --windows {args.windows}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config, split, _, long = suite_runs(args.suite)
    lists = window_lists(long, split, args.windows)
    stages = training_stages(lists)
    same_windows(args.run_dir, args.windows, args.select)
    if args.skip_training:
        record = finished_record(args.run_dir)
    else:
        _, record = train(args, training_split(split, args.windows), stages)
    epochs = load_epochs(args.run_dir, stages)
    if len(epochs) < len(record["epochs"]):
        raise SystemExit(f"{args.run_dir}: {len(epochs)} epochs' scores for {len(record['epochs'])} trained")
    epochs = epochs[: len(record["epochs"])]  # not a longer earlier run's files left in epoch-scores/
    renamed = [{n: e[s] for n, s in zip(lists, stages)} for e in epochs]
    result: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "users": split.n_users,
        "epochs": len(epochs),
        "cpu": cpu_name(),
        "flags": cpu_flags(),
        "training": record,
        "analysis": analyse(renamed, lists, args.select, (config.bootstrap, config.seed)),
    }
    for r in result["analysis"]["rows"]:
        d = r["test"]["diff_vs_retriever"]
        print(
            f"{r['name']} (K={r['k']}, w={r['weight']:g}): "
            f"test vs fused-seq {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"
        )
    write_report(args.out, result, markdown(result))
    plot(result, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
