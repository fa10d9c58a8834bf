"""Benchmark candidate generation: BM25 reference (rank_bm25) vs the sparse path, and the other generators.

Fitting is timed separately from candidate generation. Quality columns are on the
*test* stage (fit on train + validation, rank the test item) and are reported for
orientation only; defaults were chosen on validation users.

    python eval/bench_candidates.py --data ml-latest-small --k 20 --out eval/results/bench_candidates.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

try:
    import llmrec
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import llmrec

import numpy as np
from tqdm import tqdm

from llmrec.candidates import (
    GENERATORS,
    BM25Generator,
    CandidateGenerator,
    Candidates,
    TrainData,
    make_generator,
)
from llmrec.data import clean, leave_one_out, load_dataset
from llmrec.data.catalog import History
from llmrec.io import atomic_write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-latest-small", help="dataset name or folder (load_dataset)")
    p.add_argument("--k", type=int, default=20, help="candidates per user")
    p.add_argument("--users", type=int, default=None, help="evaluate the first N test users (default: all)")
    p.add_argument("--batch-size", type=int, default=1024, help="users per batch on the fast paths")
    p.add_argument(
        "--generators",
        default="popularity,itemknn,mf,ease,fused",
        help=f"comma-separated generators besides bm25 (from {', '.join(GENERATORS)})",
    )
    p.add_argument("--out", default="eval/results/bench_candidates.json", help="JSON result file")
    return p.parse_args(argv)


def run_batched(
    gen: CandidateGenerator, hists: list[History], k: int, batch: int
) -> tuple[Candidates, float]:
    """Candidates for all histories in batches; returns them and the wall seconds."""
    start = time.perf_counter()
    parts = [gen.candidates(hists[i : i + batch], k=k) for i in range(0, len(hists), batch)]
    seconds = time.perf_counter() - start
    return _concat(parts), seconds


def run_per_user(
    gen: CandidateGenerator, hists: list[History], k: int, desc: str
) -> tuple[Candidates, float]:
    """One user at a time with a progress bar (the reference path is slow)."""
    start = time.perf_counter()
    parts = [gen.candidates([h], k=k) for h in tqdm(hists, desc=desc, unit="user")]
    seconds = time.perf_counter() - start
    return _concat(parts), seconds


def _concat(parts: list[Candidates]) -> Candidates:
    return Candidates(
        items=np.concatenate([p.items for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
        fallback=np.concatenate([p.fallback for p in parts]),
    )


def quality(cands: Candidates, targets: np.ndarray) -> dict[str, float]:
    """Recall@k of the candidate list (caps any reranker) and NDCG@10 of its order."""
    hit = cands.items == targets[:, None]
    pos = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
    ndcg10 = np.where((pos >= 1) & (pos <= 10), 1.0 / np.log2(np.maximum(pos, 1) + 1.0), 0.0)
    return {"recall@k": float(hit.any(axis=1).mean()), "ndcg@10": float(ndcg10.mean())}


def timed_fit(gen: CandidateGenerator, train: TrainData) -> float:
    start = time.perf_counter()
    gen.fit(train)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    split = leave_one_out(clean(load_dataset(args.data)))
    train = TrainData(split.catalog, split.sequences("test"))
    users = split.eval_users("test")
    if args.users is not None:
        users = users[: args.users]
    hists = split.histories("test", users)
    targets = split.test[users]
    n = len(hists)
    print(f"{args.data}: {split.n_users} users, {len(split.catalog)} items; {n} test users, k={args.k}")

    # BM25: reference and fast path, same run, same histories.
    ref, fast = BM25Generator(backend="rank_bm25"), BM25Generator(backend="sparse")
    ref_fit, fast_fit = timed_fit(ref, train), timed_fit(fast, train)
    ref_c, ref_s = run_per_user(ref, hists, args.k, desc="bm25 rank_bm25")
    fast_c, fast_s = run_batched(fast, hists, args.k, args.batch_size)
    identical = bool(np.array_equal(ref_c.items, fast_c.items))
    bm25 = {
        "rank_bm25": {"fit_s": ref_fit, "seconds": ref_s, "users_per_s": n / ref_s},
        "sparse": {"fit_s": fast_fit, "seconds": fast_s, "users_per_s": n / fast_s},
        "speedup": ref_s / fast_s,
        "identical_topk": identical,
        **quality(fast_c, targets),
    }
    print(f"bm25 rank_bm25 : {n / ref_s:10.1f} users/s  (fit {ref_fit:.2f} s)")
    print(f"bm25 sparse    : {n / fast_s:10.1f} users/s  (fit {fast_fit:.2f} s)")
    print(f"bm25 speedup (sparse / rank_bm25): {ref_s / fast_s:.1f}x; identical top-{args.k}: {identical}")
    print(f"bm25 test recall@{args.k} {bm25['recall@k']:.4f}  ndcg@10 {bm25['ndcg@10']:.4f}")

    others = {}
    for name in [s.strip() for s in args.generators.split(",") if s.strip()]:
        gen = make_generator(name)
        fit_s = timed_fit(gen, train)
        cands, secs = run_batched(gen, hists, args.k, args.batch_size)
        others[name] = {"fit_s": fit_s, "seconds": secs, "users_per_s": n / secs, **quality(cands, targets)}
        q = others[name]
        print(
            f"{name:14s}: {n / secs:10.1f} users/s  (fit {fit_s:.2f} s)  "
            f"test recall@{args.k} {q['recall@k']:.4f}  ndcg@10 {q['ndcg@10']:.4f}"
        )

    result = {
        "data": args.data,
        "k": args.k,
        "n_users": n,
        "n_items": len(split.catalog),
        "stage": "test",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            "llmrec": llmrec.__version__,
            "numpy": np.__version__,
        },
        "bm25": bm25,
        "generators": others,
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
