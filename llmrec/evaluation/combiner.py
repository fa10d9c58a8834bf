"""A listwise linear combiner of per-candidate features (a conditional logit over each list).

Every scored user has a candidate list (the retriever's top-K, or a larger pool) and one
value per candidate for each named feature: the retriever position, generators' scores, the
LLM's label log-probs. The combiner learns one weight per feature by maximising the
likelihood of the held-out item's position under a softmax over its list, with an L2
penalty chosen on validation NDCG@10, and reorders each list by the weighted sum.

A stage's data is a mapping with

- ``feats``: feature name -> ``users x K`` array (the listed users, in list order);
- ``target``: the held-out item's 0-based position in each listed user's list;
- ``sel``: the listed users' indices among all evaluated users;
- ``ranked``: an object whose ``ranks`` holds every evaluated user's retriever rank (users
  whose item was not listed keep it: LlamaRec's protocol).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from llmrec.evaluation.metrics import ndcg_at_k

StageData = Mapping[str, Any]


def zscore(v: np.ndarray) -> np.ndarray:
    """Each row standardised (a list's scores on one scale, whatever the generator's)."""
    return (v - v.mean(1, keepdims=True)) / (v.std(1, keepdims=True) + 1e-9)


def fit_combiner(data: StageData, names: Sequence[str], l2: float) -> np.ndarray:
    """Weights maximizing the log-likelihood of the held-out item's position (softmax over the
    list) with an L2 penalty; starts from the retriever order (``position`` weight 1)."""
    names = list(names)
    x = np.stack([data["feats"][n] for n in names], -1)
    y, rows = data["target"], np.arange(len(data["target"]))

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        logp = log_softmax(x @ w, axis=1)
        grad = -(x[rows, y] - (np.exp(logp)[..., None] * x).sum(1)).sum(0) + 2 * l2 * w
        return float(-logp[rows, y].sum() + l2 * w @ w), grad

    w0 = np.zeros(len(names))
    if "position" in names:
        w0[names.index("position")] = 1.0
    return minimize(loss, w0, jac=True, method="L-BFGS-B").x


def combined_ranks(data: StageData, names: Sequence[str], w: np.ndarray) -> np.ndarray:
    """Every user's rank: reordered for the listed users, the retriever's for the others."""
    scores = np.stack([data["feats"][n] for n in names], -1) @ w
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = data["ranked"].ranks.copy()
    ranks[data["sel"]] = (order == data["target"][:, None]).argmax(1) + 1
    return ranks


def fit_best(
    valid: StageData, names: Sequence[str], penalties: Sequence[float]
) -> tuple[float, float, np.ndarray]:
    """Validation NDCG@10, penalty and weights of the penalty with the best validation NDCG@10
    (ties: the strongest penalty)."""
    fits = [(l2, fit_combiner(valid, names, l2)) for l2 in penalties]
    scored = [(ndcg_at_k(combined_ranks(valid, names, w), 10).mean(), l2, w) for l2, w in fits]
    return max(scored, key=lambda t: (round(t[0], 12), t[1]))


def merge_windows(parts: Sequence[StageData]) -> dict[str, Any]:
    """One fitting set from several stages' data (the users of each part stacked)."""
    offsets = np.cumsum([0] + [len(p["ranked"].ranks) for p in parts[:-1]])
    return {
        "sel": np.concatenate([p["sel"] + o for p, o in zip(parts, offsets)]),
        "feats": {n: np.concatenate([p["feats"][n] for p in parts]) for n in parts[0]["feats"]},
        "target": np.concatenate([p["target"] for p in parts]),
        "ranked": SimpleNamespace(ranks=np.concatenate([p["ranked"].ranks for p in parts])),
    }


def fit_with_windows(
    valid: StageData, windows: Sequence[StageData], names: Sequence[str], penalties: Sequence[float]
) -> tuple[float, float, np.ndarray]:
    """Like :func:`fit_best`, with extra training windows: each penalty is fit on the windows
    and judged on validation (out of sample; the returned validation NDCG@10 is that of the
    windows-only fit), then the chosen one is refit on windows + validation, the penalty scaled
    by the number of lists so that it weighs the same per list. Without windows it is
    :func:`fit_best` (in-sample validation)."""
    if not windows:
        return fit_best(valid, names, penalties)
    train = merge_windows(windows)
    judged = [
        (ndcg_at_k(combined_ranks(valid, names, fit_combiner(train, names, l2)), 10).mean(), l2)
        for l2 in penalties
    ]
    v_best, l2 = max(judged, key=lambda t: (round(t[0], 12), t[1]))
    every = merge_windows([valid, *windows])
    return v_best, l2, fit_combiner(every, names, l2 * len(every["target"]) / len(train["target"]))
