"""Uncertainty of ranking metrics: bootstrap confidence intervals over users and paired tests.

Every method of one slice is resampled with the *same* seeded user indices, so a comparison
of two methods is a paired bootstrap of their per-user differences. The report keeps two flat
lists any tool can read: ``rows`` (one per slice, method and metric: mean and CI) and
``comparisons`` (method minus baseline: difference, CI and a two-sided p-value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmrec.evaluation.metrics import ndcg_at_k, recall_at_k, reciprocal_rank


def per_user_metrics(ranks: np.ndarray, ks: Sequence[int], candidate_k: int) -> dict[str, np.ndarray]:
    """Per-user values of every reported metric (``ndcg@k``, ``recall@k``, ``mrr``,
    ``cand_recall@K``) from 1-based ranks of the held-out items."""
    ranks = np.asarray(ranks)
    out = {
        f"{name}@{k}": fn(ranks, k) for k in ks for name, fn in (("ndcg", ndcg_at_k), ("recall", recall_at_k))
    }
    out["mrr"] = reciprocal_rank(ranks)
    out[f"cand_recall@{candidate_k}"] = recall_at_k(ranks, candidate_k)
    return out


RESAMPLE_BLOCK_VALUES = 2**22
"""Resampled values gathered at once by :func:`resample_means` (32 MB of float64)."""


def resample_means(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over each row of bootstrap ``indices`` (resamples x users).

    In blocks of resamples: each row's mean is computed alone, so the numbers do not depend
    on the block size, and memory stays bounded for many users.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(len(indices), dtype=np.float64)
    step = max(1, RESAMPLE_BLOCK_VALUES // max(1, indices.shape[1] if indices.ndim == 2 else 1))
    for lo in range(0, len(indices), step):
        out[lo : lo + step] = values[indices[lo : lo + step]].mean(axis=1)
    return out


def bootstrap_indices(n_users: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples x n_users`` user indices drawn with replacement (seeded; int32 when they fit,
    half the memory, the same values)."""
    drawn = np.random.default_rng(seed).integers(0, n_users, size=(resamples, n_users))
    return drawn.astype(np.int32) if n_users < 2**31 else drawn


def percentile_interval(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap means ``boot``."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return float(low), float(high)


def mean_ci(values: np.ndarray, indices: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of ``values``."""
    return float(np.mean(values)), *percentile_interval(resample_means(values, indices), level)


def paired_difference(
    a: np.ndarray, b: np.ndarray, indices: np.ndarray, level: float = 0.95
) -> tuple[float, float, float, float]:
    """Mean of ``a - b`` per user, its bootstrap CI, and a two-sided p-value for "no
    difference" (the bootstrap distribution shifted to mean 0)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(diff.mean())
    boot = resample_means(diff, indices)
    low, high = percentile_interval(boot, level)
    extreme = np.abs(boot - mean) >= abs(mean) - 1e-15
    p_value = float((1 + extreme.sum()) / (1 + len(boot))) if mean != 0 else 1.0
    return mean, low, high, p_value


def uncertainty(
    ranks: Mapping[str, Mapping[str, np.ndarray]],
    baselines: Mapping[str, str | None],
    ks: Sequence[int],
    candidate_k: int,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``rows`` and ``comparisons`` of every slice (``ranks[slice][method]`` = per-user ranks,
    the same users in the same order for every method of a slice)."""
    rows: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    total = sum(len(by_method) for by_method in ranks.values())
    bar = tqdm(total=total, desc="bootstrap", leave=False, disable=total * resamples < 10**5)
    for slice_name, by_method in ranks.items():
        n = len(next(iter(by_method.values()), []))
        if n == 0:
            bar.update(len(by_method))
            continue
        indices = bootstrap_indices(n, resamples, seed)
        values = {m: per_user_metrics(r, ks, candidate_k) for m, r in by_method.items()}
        for method, metrics in values.items():
            bar.update()
            for metric, v in metrics.items():
                mean, low, high = mean_ci(v, indices)
                rows.append(
                    {
                        "slice": slice_name,
                        "method": method,
                        "metric": metric,
                        "mean": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "users": n,
                    }
                )
            baseline = baselines.get(method)
            if baseline is None or baseline not in values:
                continue
            for metric, v in metrics.items():
                diff, low, high, p = paired_difference(v, values[baseline][metric], indices)
                comparisons.append(
                    {
                        "slice": slice_name,
                        "method": method,
                        "baseline": baseline,
                        "metric": metric,
                        "diff": diff,
                        "ci_low": low,
                        "ci_high": high,
                        "p_value": p,
                    }
                )
    bar.close()
    return rows, comparisons
