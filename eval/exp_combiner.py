"""What does the LLM add to the retriever? A listwise linear combiner, measured.

On the users of a suite's single-domain run, each retrieved user's fused top-K is rescored by
a conditional-logit model (softmax over the list) over per-candidate features: the fused
position, each fused component's score (z-scored within the list), training popularity, the
sequential transitions from the user's last items (``transition``, which the fused
components lack), and the LLM's label log-probs (log-softmax over the list). The model is fit
on the validation stage (generators fit without the validation items) and applied to the test
stage; users whose held-out item was not retrieved keep the retriever's rank (LlamaRec
protocol). ``--item-encoders`` adds, per encoder, the cosine similarity of each candidate to
the user's recency-weighted history vector (:class:`EmbeddingGenerator`): a sentence encoder
(``all-minilm-l6-v2``) is a content feature, an LLM (``smollm2-135m-instruct``: its mean-pooled
last hidden states) an LLM feature, ablated as such. ``--windows N`` adds N earlier training
windows (the 1..N items before each validation item, generators refit on what came before
them); the penalty is then chosen on validation out of sample. Feature sets are ablated, each
against the fused retriever by a paired bootstrap over all users, and each LLM set against the
same set without the LLM.

    python eval/exp_combiner.py eval/ml-latest-small.yaml --windows 4 --out eval/results/combiner.json

Fitted generators, candidate lists and LLM scores come from the evaluation cache (a run of the
suite fills it), so this takes seconds after `llmrec evaluate eval/ml-latest-small.yaml`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.special import log_softmax
from tqdm.auto import tqdm

from llmrec.candidates.base import TrainData
from llmrec.candidates.embedding import DEFAULT_ENCODER, EmbeddingGenerator
from llmrec.data import leave_one_out
from llmrec.evaluation.cache import data_fingerprint
from llmrec.evaluation.combiner import combined_ranks, fit_with_windows, zscore
from llmrec.evaluation.experiment import (
    EvalRun,
    histories_key,
    open_cache,
    reranker_scores,
    stage_lists,
)
from llmrec.evaluation.llm_stage import mean_log_softmax_rows
from llmrec.evaluation.metrics import ndcg_at_k, recall_at_k
from llmrec.evaluation.stats import bootstrap_indices, mean_ci, paired_difference
from llmrec.evaluation.suite import load_suite
from llmrec.hashing import digest
from llmrec.io import atomic_write_json, atomic_write_text
from llmrec.llm.likelihood import LikelihoodParams
from llmrec.llm.models import resolve_model
from llmrec.llm.reranker import RerankParams
from llmrec.pipeline import prepare_data

COMPONENTS = ("bm25", "itemknn", "mf", "ease")
FEATURE_SETS = {
    "retriever order": ["position"],
    "retriever order + LLM (score fusion)": ["position", "llm"],
    "retriever order + transitions": ["position", "transition"],
    "retriever order + transitions + LLM": ["position", "transition", "llm"],
    "components": ["position", *COMPONENTS, "popularity"],
    "components + LLM": ["position", *COMPONENTS, "popularity", "llm"],
    "components + transitions": ["position", *COMPONENTS, "popularity", "transition"],
    "components + transitions + LLM": ["position", *COMPONENTS, "popularity", "transition", "llm"],
    "components + LLM + LLM x short history": ["position", *COMPONENTS, "popularity", "llm", "llm_short"],
}


MOVIES_HEADER = "A user's favourite movies, one per line:\n"
"""The likelihood prompt's first line on the MovieLens suites (``--likelihood-header``'s default)."""


def encoder_feature(name: str) -> str:
    """The feature name of an item encoder: LLMs' start with "llm", so they are ablated as LLM
    features."""
    return f"content:{name}" if name == DEFAULT_ENCODER else f"llm_embed:{name}"


def fit_encoders(names: list[str], train: TrainData) -> dict[str, EmbeddingGenerator]:
    """One embedding generator per encoder (item vectors depend on the catalog's texts only, so
    one fit serves every stage and window); LLM names resolve to their model folders."""
    out = {}
    for name in names:
        path = name if name == DEFAULT_ENCODER else resolve_model(name)
        out[encoder_feature(name)] = EmbeddingGenerator(encoder=path, batch_size=32).fit(train)
    return out


def likelihood_feature(run: EvalRun, scorer, catalog, shown, items: np.ndarray) -> np.ndarray:
    """Each candidate's PMI with the user's history under ``scorer``
    (:class:`~llmrec.llm.likelihood.CandidateLikelihood`), computed in chunks through the
    evaluation cache (a killed run resumes)."""
    key = digest("likelihood", scorer.key, items, *histories_key(shown))
    titles = [[catalog.titles[i] for i in h.items] for h in shown]
    cands = [[catalog.titles[i] for i in row if i >= 0] for row in items]

    def compute(lo: int, hi: int) -> np.ndarray:
        out = np.zeros((hi - lo, items.shape[1]))
        for r, s in enumerate(scorer.score(titles[lo:hi], cands[lo:hi], progress=False)):
            out[r, : len(s)] = s
        return out

    with tqdm(total=len(shown), desc="LLM likelihood", leave=False) as bar:
        matrix, _ = run.cache.chunked_rows("likelihood", key, len(shown), 16, compute, bar.update)
    return matrix


def stage_features(
    run: EvalRun,
    split,
    users: np.ndarray,
    stage: str,
    reranker,
    short: int,
    window: int = 0,
    encoders: dict[str, EmbeddingGenerator] | None = None,
    likelihood=None,
    item_tokens: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Candidate lists, features and target positions of the retrieved users of ``stage``.

    ``window`` > 0: ``split`` is the suite's split shifted back that many steps
    (:meth:`LeaveOneOutSplit.shifted`), an extra training window for the combiner.
    ``encoders``: feature name -> fitted embedding generator, one similarity feature each.
    ``likelihood``: a :class:`~llmrec.llm.likelihood.CandidateLikelihood`, or another
    ``(name, config)`` reranker of the suite (its cached suite scores, e.g. the history LM's, or a
    second listwise adapter's): feature ``llm_pmi``.
    ``item_tokens``: the stage's users and an item-token LM's scores of every item for each
    (``eval/exp_item_tokens.py``'s ``catalog-scores.npz``): feature ``llm_items``.
    """
    name, cfg = reranker
    lists = stage_lists(run, split, stage, users, window)
    gens, users, hist, targets = lists.generators, lists.users, lists.histories, lists.targets
    ranked = lists.ranked
    scored = reranker_scores(run, name, cfg, gens, ranked, hist, RerankParams(seed=run.config.seed))
    fused = gens.get(run.config.retriever)  # fused, or fused-seq: components + transition
    if not hasattr(fused, "generators"):
        raise SystemExit(
            f"the combiner reads a fused retriever's components; {run.config.retriever!r} has none"
        )
    sel, items = scored.users, ranked.candidates[scored.users]
    shown = [hist[u] for u in sel]

    def picked(gen) -> np.ndarray:  # the generator's scores of each list's candidates
        v = np.take_along_axis(gen.masked_scores(shown, exclude_history=True, allowed=None), safe, axis=1)
        return np.where(np.isfinite(v), v, 0.0)

    safe = np.maximum(items, 0)
    parts = {comp.name: comp for comp in fused.generators}
    # Sequential evidence (llmrec.candidates.transition): fused-seq's own component, else fit on
    # the same training part; log-scaled, as its frequencies span orders of magnitude.
    transition = parts.pop("transition", None) or gens.get("transition")
    feats = {name: zscore(picked(comp)) for name, comp in parts.items()}
    k = items.shape[1]
    feats["position"] = np.tile(np.log(1.0 / np.arange(1, k + 1)), (len(sel), 1))
    feats["popularity"] = zscore(np.log1p(fused.item_counts[safe]))
    feats["transition"] = zscore(np.log(picked(transition) + 1e-4))
    feats["llm"] = np.stack([log_softmax(x) for x in scored.scores])
    is_short = np.array([len(h.items) <= short for h in shown], dtype=float)[:, None]
    feats["llm_short"] = feats["llm"] * is_short
    for feature, gen in (encoders or {}).items():
        feats[feature] = zscore(picked(gen))
    if isinstance(likelihood, tuple):  # a suite reranker: the same users, the same lists
        pmi = reranker_scores(run, *likelihood, gens, ranked, hist, RerankParams(seed=run.config.seed))
        feats["llm_pmi"] = zscore(np.nan_to_num(np.stack(pmi.scores)))
    elif likelihood is not None:
        feats["llm_pmi"] = zscore(likelihood_feature(run, likelihood, split.catalog, shown, items))
    if item_tokens is not None:
        item_users, catalog_scores = item_tokens
        if not np.array_equal(item_users, users):
            raise SystemExit(
                f"--item-token-scores: the {stage} users differ from this suite's "
                f"({len(item_users)} against {len(users)}): scored on another split or suite"
            )
        if catalog_scores.shape[1] != len(split.catalog):
            raise SystemExit(
                f"--item-token-scores: {catalog_scores.shape[1]} items scored, this suite's catalog "
                f"has {len(split.catalog)}: scored on another dataset"
            )
        feats["llm_items"] = zscore(np.take_along_axis(catalog_scores[sel], safe, axis=1))
    target_pos = (items == targets[sel][:, None]).argmax(1)
    return {
        "sel": sel,
        "feats": feats,
        "target": target_pos,
        "ranked": ranked,
        "scored": scored,
        "targets": targets,
    }


def extra_llm_sets(label: str, feature: str, full: list[str], encoders) -> dict[str, list[str]]:
    """The feature sets that add an extra LLM ``feature`` to the retriever order, to the full
    set, each with and without the listwise LLM, and to the full set with each item encoder."""
    sets = {
        f"retriever order + {label}": ["position", feature],
        f"retriever order + LLM + {label}": ["position", "llm", feature],
        f"components + transitions + {label}": [*full, feature],
        f"components + transitions + LLM + {label}": [*full, "llm", feature],
    }
    for encoder in encoders:
        sets[f"components + transitions + {encoder} + {label}"] = [*full, encoder, feature]
    return sets


def load_item_token_scores(paths: list[Path] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``stage -> (users, catalog scores)`` from an item-token run's ``catalog-scores.npz``;
    from several runs (e.g. training seeds), the mean of their log-softmax scores."""
    if not paths:
        return {}
    runs = []
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"--item-token-scores {path}: no such file (eval/exp_item_tokens.py writes it)")
        with np.load(path) as z:
            missing = [k for k in ("valid", "valid_users", "test", "test_users") if k not in z.files]
            if missing:
                raise SystemExit(f"--item-token-scores {path}: arrays {missing} missing (has {z.files})")
            runs.append({s: (z[f"{s}_users"], z[s]) for s in ("valid", "test")})
    if len(runs) == 1:
        return runs[0]
    out = {}
    for s in ("valid", "test"):
        users, first = runs[0][s]
        for path, run in zip(paths[1:], runs[1:]):
            if not np.array_equal(run[s][0], users) or run[s][1].shape != first.shape:
                raise SystemExit(
                    f"--item-token-scores {path}: its {s} users or catalog differ from {paths[0]}'s"
                )
        out[s] = (users, mean_log_softmax_rows([run[s][1] for run in runs]))
    return out


def load_likelihood(model: str | None, header: str):
    """A candidate-likelihood scorer over ``model`` in float32 (None: no likelihood feature). A
    tuned history LM is read as a suite reranker instead (``--likelihood-reranker``)."""
    if model is None:
        return None
    from llmrec.llm.likelihood import CandidateLikelihood
    from llmrec.llm.transformers_backend import TransformersBackend, TransformersConfig

    backend = TransformersBackend(TransformersConfig(model=model, dtype="float32"))
    params = LikelihoodParams(header=header.replace("\\n", "\n"))
    return CandidateLikelihood(backend.model, backend.tokenizer, params, model_name=model)


def window_features(
    run: EvalRun,
    split,
    reranker,
    short: int,
    n: int,
    encoders: dict[str, EmbeddingGenerator],
    likelihood=None,
) -> list[dict]:
    """Validation-stage features of ``n`` extra windows, 1..n steps before the suite's validation
    item (generators refit on each window's training part)."""
    out = []
    for window in range(1, n + 1):
        shifted = split.shifted(window)
        users = shifted.eval_users("valid")
        out.append(
            stage_features(run, shifted, users, "valid", reranker, short, window, encoders, likelihood)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--out", type=Path, default=Path("eval/results/combiner.json"))
    parser.add_argument("--l2", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument(
        "--reranker", help="the suite's reranker whose scores are the LLM feature (default: the first)"
    )
    parser.add_argument("--short", type=int, default=20, help="'short history' = at most this many items")
    parser.add_argument(
        "--windows",
        type=int,
        default=0,
        help="extra training windows: fit also on the 1..N items before each validation item "
        "(generators and LLM scores recomputed per window; cached)",
    )
    parser.add_argument(
        "--item-encoders",
        nargs="*",
        default=[],
        help=f"item encoders whose history similarity is a feature: {DEFAULT_ENCODER!r} (content) "
        "or an LLM name / folder (its hidden states; an LLM feature)",
    )
    parser.add_argument(
        "--likelihood-model",
        help="an LLM (name or folder) whose candidate-title PMI given the history is a feature "
        "(llmrec.llm.likelihood; pointwise, so it cannot read the candidates' order)",
    )
    parser.add_argument(
        "--likelihood-reranker",
        help="a reranker of the suite with scorer: likelihood (e.g. the history LM) whose scores are "
        "the likelihood feature, read from the suite's cache (instead of --likelihood-model)",
    )
    parser.add_argument(
        "--likelihood-header",
        default=MOVIES_HEADER,
        help="the line before the history in the likelihood prompt (\\n: a newline)",
    )
    parser.add_argument(
        "--item-token-scores",
        type=Path,
        nargs="+",
        help="catalog-scores.npz of an eval/exp_item_tokens.py run on this suite: the item-token LM's "
        "scores of each candidate are the feature 'item-token LM' (validation fit only: the model "
        "trained on the items before each validation item, so it cannot join --windows); several "
        "files (e.g. training seeds): the mean of their log-softmax scores",
    )
    args = parser.parse_args(argv)
    if args.item_token_scores is not None and args.windows:
        parser.error("--item-token-scores cannot join --windows: the item-token LM trained on their items")
    suite = load_suite(args.suite)
    ((_, config),) = suite.run_configs()[:1]
    start = time.perf_counter()
    data = prepare_data(config)
    run = EvalRun(config, open_cache(config), data_fingerprint(data), {})
    split = leave_one_out(data, order=config.order)
    users = split.eval_users("test")
    names = [name for name, _ in run.rerankers]
    if args.reranker is not None and args.reranker not in names:
        parser.error(f"--reranker {args.reranker!r} is not in {args.suite}; its rerankers: {names}")
    reranker = run.rerankers[names.index(args.reranker) if args.reranker else 0]
    encoders = fit_encoders(args.item_encoders, TrainData(split.catalog, split.sequences("test")))
    likelihood = load_likelihood(args.likelihood_model, args.likelihood_header)
    if args.likelihood_reranker is not None:
        if args.likelihood_reranker not in names:
            parser.error(
                f"--likelihood-reranker {args.likelihood_reranker!r} is not in {args.suite}: {names}"
            )
        likelihood = run.rerankers[names.index(args.likelihood_reranker)]
    item_tokens = load_item_token_scores(args.item_token_scores)
    valid, test = (
        stage_features(
            run, split, users, s, reranker, args.short, 0, encoders, likelihood, item_tokens.get(s)
        )
        for s in ("valid", "test")
    )
    windows = window_features(run, split, reranker, args.short, args.windows, encoders, likelihood)
    feature_sets = dict(FEATURE_SETS)
    full = FEATURE_SETS["components + transitions"]
    for feature in encoders:
        feature_sets[f"components + transitions + {feature}"] = [*full, feature]
        feature_sets[f"components + transitions + {feature} + LLM"] = [*full, feature, "llm"]
    if likelihood is not None:
        feature_sets.update(extra_llm_sets("LLM likelihood", "llm_pmi", full, encoders))
    if item_tokens:
        feature_sets.update(extra_llm_sets("item-token LM", "llm_items", full, encoders))
    base = ndcg_at_k(test["ranked"].ranks, 10)
    idx = bootstrap_indices(len(base), config.bootstrap, config.seed)
    rows = [
        {"features": f"{config.retriever} retriever", "ndcg@10": mean_ci(base, idx), "valid_ndcg@10": None}
    ]
    per_set: dict[tuple[str, ...], np.ndarray] = {}
    for label, names in feature_sets.items():
        v_best, l2, w = fit_with_windows(valid, windows, names, args.l2)
        ranks = combined_ranks(test, names, w)
        nd = ndcg_at_k(ranks, 10)
        per_set[tuple(names)] = nd
        without = tuple(n for n in names if not n.startswith("llm"))
        llm_adds = paired_difference(nd, per_set[without], idx) if without != tuple(names) else None
        rows.append(
            {
                "features": label,
                "l2": l2,
                "weights": dict(zip(names, np.round(w, 4).tolist())),
                "valid_ndcg@10": float(v_best),
                "ndcg@10": mean_ci(nd, idx),
                "recall@10": float(recall_at_k(ranks, 10).mean()),
                "diff_vs_fused": paired_difference(nd, base, idx),
                "llm_adds": llm_adds,
            }
        )
    window_note = (
        f" and {sum(len(w['sel']) for w in windows)} retrieved users of {len(windows)} earlier windows "
        "(penalty chosen on validation out of sample: valid NDCG@10 is the windows-only fit's)"
        if windows
        else ""
    )
    lines = [
        f"Combiner over the {config.retriever} top-{config.num_candidates} ({reranker[0]}): "
        f"fit on {len(valid['sel'])} retrieved validation users{window_note}, "
        f"tested on all {len(base)} users ({len(test['sel'])} retrieved).",
        "",
        "| features | l2 | valid NDCG@10 | test NDCG@10 [95% CI] "
        f"| difference vs {config.retriever} [95% CI] | p | what the LLM features add [95% CI] |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m, lo, hi = r["ndcg@10"]
        d = r.get("diff_vs_fused")
        diff = "-" if d is None else f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"
        p = "-" if d is None else f"{d[3]:.3f}"
        valid_cell = "-" if r["valid_ndcg@10"] is None else f"{r['valid_ndcg@10']:.4f}"
        a = r.get("llm_adds")
        adds = "-" if a is None else f"{a[0]:+.4f} [{a[1]:+.4f}, {a[2]:+.4f}]"
        cells = [
            r["features"],
            str(r.get("l2", "-")),
            valid_cell,
            f"{m:.4f} [{lo:.4f}, {hi:.4f}]",
            diff,
            p,
            adds,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    for r in rows[1:]:
        print(f"{r['features']}: weights {r['weights']}")
    atomic_write_json(
        args.out,
        {
            "suite": suite.name,
            "item_token_scores": [str(p) for p in args.item_token_scores or []],
            "rows": rows,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    atomic_write_text(args.out.with_suffix(".md"), table + "\n")
    print(f"written: {args.out}, {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
