"""Evaluation suites: one YAML file (``eval/*.yaml``) -> one results folder.

A suite holds everything of an evaluation: dataset, cleaning, split, generators, rerankers
(template, adapter, fusion), metrics, slices and seed, plus optional named ``runs`` that
override settings (e.g. arts -> office and office -> arts). Every setting is checked when
the file is read, before any data is loaded. :func:`comparable` strips what differs between
two identical runs (wall times, cache hits), so a committed report can be checked exactly.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from llmrec import __version__
from llmrec.config import load_config
from llmrec.evaluation.config import SuiteConfig
from llmrec.evaluation.experiment import VOLATILE, open_cache, run_evaluation

SUITE_SUFFIXES = (".yaml", ".yml")


def is_suite_file(value: str | None) -> bool:
    """True when ``value`` names a suite file (rather than a dataset)."""
    return bool(value) and Path(str(value)).suffix in SUITE_SUFFIXES and Path(str(value)).is_file()


def load_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> SuiteConfig:
    """The suite in ``path`` (flags in ``overrides`` win), fully checked."""
    suite = load_config(SuiteConfig, path, overrides)
    if not suite.name:
        suite.name = Path(path).stem
    return suite


def run_suite(suite: SuiteConfig) -> dict[str, Any]:
    """Run every run of ``suite`` and return the suite report (JSON-ready)."""
    from llmrec.pipeline import prepare_data

    started = time.perf_counter()
    cache = open_cache(suite)
    prepared: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    for name, cfg in suite.run_configs():
        data_key = repr(
            (
                cfg.dataset,
                cfg.format,
                sorted(cfg.columns.items()),
                cfg.only_domain,
                cfg.k_core,
                cfg.min_rating,
            )
        )
        if data_key not in prepared:  # runs over the same data load and clean it once
            prepared[data_key] = prepare_data(cfg)
        runs[name] = run_evaluation(cfg, prepared[data_key], cache)
    return {
        "suite": {"name": suite.name, "description": suite.description},
        "runs": runs,
        "rows": [{"run": n, **row} for n, r in runs.items() for row in r["rows"]],
        "comparisons": [{"run": n, **c} for n, r in runs.items() for c in r["comparisons"]],
        "config": suite.to_dict(),
        "versions": {"llmrec": __version__, "python": platform.python_version()},
        "elapsed_seconds": round(time.perf_counter() - started, 2),
        "cache": {"folder": str(cache.root) if cache.root else None, **cache.stats},
        "complete": True,
    }


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` without the keys that differ between identical runs (:data:`VOLATILE`),
    at the top level and in every run; also without the cache folder in the config."""

    def strip(body: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k not in VOLATILE}
        if isinstance(out.get("dataset"), dict):  # where the data sits on this machine
            out["dataset"] = {k: v for k, v in out["dataset"].items() if k != "source"}
        if isinstance(out.get("config"), dict):
            out["config"] = {k: v for k, v in out["config"].items() if k not in ("cache", "cache_dir")}
        for group in out.get("groups", {}).values():
            for row in group.get("methods", {}).values():
                row.pop("score_seconds", None)
            for row in group.get("rerank", {}).get("rows", {}).values():
                for key in ("rerank_seconds", "users_per_second"):
                    row.pop(key, None)
        return out

    out = strip(report)
    if "runs" in out:
        out["runs"] = {name: strip(body) for name, body in out["runs"].items()}
    return out


def differences(report: dict[str, Any], reference: dict[str, Any], limit: int = 20) -> list[str]:
    """Paths where ``report`` and ``reference`` differ (after :func:`comparable`)."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if key not in a or key not in b:
                    out.append(f"{path}/{key}: only in {'reference' if key in b else 'this run'}")
                else:
                    walk(a[key], b[key], f"{path}/{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            out.append(f"{path}: {str(a)[:80]} != {str(b)[:80]} (reference)")

    walk(comparable(report), comparable(reference), "")
    return out
