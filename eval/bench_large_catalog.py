"""Benchmark ``llmrec evaluate`` (retrieval only) on a large synthetic catalog: time per step, peak memory.

No real catalog of 50,000 users x 16,000 items is at hand, so this generates a seeded synthetic
one (``interactions.parquet`` + ``items.parquet``, the "tables" format) with a realistic shape:
power-law item popularity, users with 10-100 interactions (log-uniform), topics that give the
items text for BM25, and sequential structure (a user often moves on to the item after the
last one in the same topic). It is written once to ``eval/results/large-catalog/`` and reused.

The evaluation is :func:`llmrec.evaluation.experiment.run_evaluation`, the code path of
``llmrec evaluate``: the default methods (popularity, bm25, itemknn, mf, ease, fused), all
users, every item ranked, cache off. Steps: load + clean, fit per generator, candidates per
generator (fused = fusion), metrics (summaries, slices, bootstrap); peak RSS from ``ru_maxrss``.

    OMP_WAIT_POLICY=PASSIVE python eval/bench_large_catalog.py --label after
    python eval/bench_large_catalog.py --users 10000 --items 4000 --label quick

Run from another checkout (e.g. a ``git worktree`` of an older commit) to measure that code:
the checkout this file lies in is imported first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's llmrec, not the installed one

import numpy as np
import pandas as pd

from llmrec.evaluation.config import EvalConfig
from llmrec.evaluation.experiment import run_evaluation
from llmrec.io import atomic_write_json

TOPIC_SIZE = 100
"""Items per topic (the last topic may be smaller)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50_000, help="synthetic users")
    p.add_argument("--items", type=int, default=16_000, help="synthetic items")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--label", default="after", help="name of this measurement (e.g. before, after)")
    p.add_argument("--data-dir", default="eval/results/large-catalog", help="cache folder of the datasets")
    p.add_argument(
        "--out", default="eval/reports/bench_large_catalog.json", help="JSON results (merged by label)"
    )
    p.add_argument("--methods", default=None, help="comma-separated methods (default: llmrec evaluate's)")
    return p.parse_args(argv)


def _user_topics(rng: np.random.Generator, n_users: int, n_topics: int) -> np.ndarray:
    """Three favourite topics per user, popular topics more often (Zipf over topics)."""
    weights = 1.0 / np.arange(1, n_topics + 1) ** 0.7
    order = rng.permutation(n_topics)
    return order[rng.choice(n_topics, size=(n_users, 3), p=weights / weights.sum())]


def _topic_cdf(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """Per topic, the cumulative sampling weights of its items (power law over the items)."""
    n_topics = -(-n_items // TOPIC_SIZE)
    ranks = rng.permutation(n_items) + 1
    weights = np.zeros(n_topics * TOPIC_SIZE)
    weights[:n_items] = 1.0 / ranks**0.9
    weights = weights.reshape(n_topics, TOPIC_SIZE)
    cdf = np.cumsum(weights, axis=1)
    return cdf / cdf[:, -1:]


def synthetic_interactions(n_users: int, n_items: int, seed: int) -> pd.DataFrame:
    """user_id, item_id, timestamp rows (see the module docstring for the shape)."""
    rng = np.random.default_rng(seed)
    cdf = _topic_cdf(rng, n_items)
    n_topics = len(cdf)
    fav = _user_topics(rng, n_users, n_topics)
    lengths = np.exp(rng.uniform(np.log(10), np.log(101), size=n_users)).astype(np.int64)
    cols: list[np.ndarray] = []
    prev = np.zeros(n_users, dtype=np.int64)
    for step in range(int(lengths.max())):
        topic = fav[np.arange(n_users), rng.integers(0, 3, size=n_users)]
        pos = (cdf[topic] < rng.random(n_users)[:, None]).sum(axis=1)
        fresh = np.minimum(topic * TOPIC_SIZE + pos, n_items - 1)
        # Sequential structure: half the time the next item in the previous item's topic.
        nxt = np.where(prev % TOPIC_SIZE == TOPIC_SIZE - 1, prev - TOPIC_SIZE + 1, prev + 1)
        follow = (step > 0) & (rng.random(n_users) < 0.5) & (nxt < n_items)
        prev = np.where(follow, nxt, fresh)
        cols.append(prev)
    items = np.stack(cols, axis=1)
    keep = np.arange(items.shape[1])[None, :] < lengths[:, None]
    users = np.broadcast_to(np.arange(n_users)[:, None], items.shape)[keep]
    start = rng.integers(1_500_000_000, 1_600_000_000, size=n_users)
    steps = np.broadcast_to(np.arange(items.shape[1])[None, :], items.shape)[keep]
    return pd.DataFrame(
        {
            "user_id": np.char.add("u", users.astype(str)),
            "item_id": np.char.add("i", items[keep].astype(str)),
            "timestamp": start[users] + 3600 * steps,
        }
    )


def synthetic_items(n_items: int, seed: int) -> pd.DataFrame:
    """item_id, title: topic words (shared within a topic) plus words of the item's own."""
    rng = np.random.default_rng(seed + 1)
    syllables = np.array(["ka", "lo", "mi", "ru", "te", "sa", "vo", "ne", "pi", "da", "go", "fu"])
    words = ["".join(rng.choice(syllables, size=3)) for _ in range(4000)]
    titles = []
    for i in range(n_items):
        topic = i // TOPIC_SIZE
        topic_words = [words[(topic * 7 + j) % 1000] for j in rng.choice(5, size=2, replace=False)]
        own = [words[1000 + int(w)] for w in rng.integers(0, 3000, size=2)]
        titles.append(" ".join([*topic_words, *own, f"no{i}"]))
    return pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": titles})


def dataset(root: Path, n_users: int, n_items: int, seed: int) -> Path:
    """The folder of the synthetic dataset of this shape, generated on first use."""
    folder = root / f"synthetic-{n_users}x{n_items}-seed{seed}"
    if (folder / "items.parquet").is_file():
        return folder
    start = time.perf_counter()
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    synthetic_interactions(n_users, n_items, seed).to_parquet(tmp / "interactions.parquet", index=False)
    synthetic_items(n_items, seed).to_parquet(tmp / "items.parquet", index=False)
    tmp.rename(folder)
    print(f"generated {folder} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return folder


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else platform.processor()


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def steps(report: dict) -> dict[str, float]:
    """Seconds per step from the report: load, fit per generator, candidates, metrics.

    Where the methods were ranked in one threaded pass (``timings.ranking_seconds``), that wall
    time is the candidates step and each method's own seconds are thread-seconds within it.
    """
    timings = report["timings"]
    out = {"load + clean": timings["data_seconds"]}
    for key, entry in timings.get("generators", {}).items():
        out[f"fit {key.split(':', 1)[1]}"] = entry["seconds"]
    wall = timings.get("ranking_seconds", {}).get("all")
    per_method = {name: row["score_seconds"] for name, row in report["groups"]["all"]["methods"].items()}
    suffix = " (thread-s)" if wall is not None else ""
    out.update({f"candidates {name}{suffix}": seconds for name, seconds in per_method.items()})
    ranking = wall if wall is not None else sum(per_method.values())
    if wall is not None:
        out["candidates, all methods (wall)"] = wall
    counted = sum(v for k, v in out.items() if not k.endswith("(thread-s)") and k.startswith(("fit", "load")))
    out["metrics (summaries, bootstrap)"] = round(report["elapsed_seconds"] - counted - ranking, 3)
    out["total"] = report["elapsed_seconds"]
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    folder = dataset(Path(args.data_dir), args.users, args.items, args.seed)
    config = EvalConfig(dataset=str(folder), cache=False)
    if args.methods:
        config = EvalConfig(dataset=str(folder), cache=False, methods=args.methods.split(","))
    report = run_evaluation(config)
    timing = steps(report)
    result = {
        "label": args.label,
        "dataset": f"synthetic, seed {args.seed}: {args.users} users x {args.items} items generated; "
        f"after cleaning {report['protocol']['users']} users x {report['protocol']['items']} items, "
        f"{report['dataset']['interactions']} interactions",
        "methods": config.methods,
        "seconds": timing,
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "cpu": cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "ndcg@10": {
            m: round(r["metrics"]["ndcg@10"], 5) for m, r in report["groups"]["all"]["methods"].items()
        },
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.is_file() else {}
    saved[f"{args.label} {args.users}x{args.items}"] = result
    atomic_write_json(out, saved)
    print(f"{result['dataset']}; {result['cpu']}, peak RSS {result['peak_rss_gb']} GB")
    for step, seconds in timing.items():
        print(f"  {step:34s} {seconds:9.1f} s")


if __name__ == "__main__":
    main()
