# ruff: noqa: E402  (OPENBLAS_NUM_THREADS must be set before numpy loads)
"""Benchmark: `llmrec ray-batch` with 1 and 2 workers against `llmrec batch`, in one run.

The same users of ml-latest-small (a Parquet file of the first ``--users`` user ids), the same
settings (the LLM stage on: SmolLM2-135M, transformers, listwise_compact) and chunk size go
through `llmrec batch` (one process, every core) and through the Ray Data job on a local
cluster started for each run, with 1 worker of every core and with N workers sharing them.
Prints and writes (atomically) users/s over the ranking time (setup excluded: data,
retriever and model loading; for Ray also the cluster's start), the end-to-end seconds, the
ratios to `llmrec batch` and how many ranked lists differ from `llmrec batch`'s (torch's
thread count changes the bf16 sums a little: a worker of 1 thread against a job of 2), with the CPU
model (/proc/cpuinfo's model name, as lscpu shows it) beside the timings.

    python eval/bench_ray_batch.py --users 96 --workers 1,2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pyarrow as pa
import pyarrow.parquet as pq
from bench_train import cpu_flags, cpu_name  # eval/ scripts beside this one

from llmrec.batch import BatchJob
from llmrec.config import RecommendConfig
from llmrec.io import atomic_write_json
from llmrec.ray_batch import RayBatchJob


def rankings(path: str | Path) -> dict[str, list]:
    """Each request's ranked item ids."""
    table = pq.read_table(path, columns=["request_id", "item_id"]).to_pylist()
    out: dict[str, list] = {}
    for row in table:
        out.setdefault(row["request_id"], []).append(row["item_id"])
    return out


def differing(ours: dict[str, list], reference: dict[str, list]) -> int:
    """How many requests' ranked lists differ from the reference's."""
    return sum(ours.get(request) != items for request, items in reference.items())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="ml-latest-small")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--template", default="listwise_compact")
    parser.add_argument("--retriever", default="itemknn")
    parser.add_argument("--users", type=int, default=96)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--out", default="eval/reports/bench_ray_batch.json")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    config = RecommendConfig(
        dataset=args.data,
        model=args.model,
        template=args.template,
        retriever=args.retriever,
        num_candidates=10,
        n=10,
        dtype="auto",
        batch_size=8,
    )
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "users.parquet"
        pq.write_table(pa.table({"user": [str(u) for u in range(1, args.users + 1)]}), source)
        batch = BatchJob(source, Path(tmp) / "batch.parquet", config, args.chunk_size).run(progress=False)
        reference = rankings(batch.output)
        runs.append(
            {
                "job": "llmrec batch",
                "workers": 1,
                "cpus_per_worker": cores,
                "users_per_s": batch.users_per_s,
                "rank_s": batch.rank_s,
                "setup_s": batch.setup_s,
                "total_s": batch.total_s,
                "same_rankings": True,
                "differing_lists": 0,
            }
        )
        print(f"llmrec batch: {batch.line()}", flush=True)
        for workers in [int(w) for w in args.workers.split(",")]:
            out = Path(tmp) / f"ray-{workers}.parquet"
            summary = RayBatchJob(source, out, config, workers, args.chunk_size).run()
            print(f"ray-batch x{workers}: {summary.line()}", flush=True)
            runs.append(
                {
                    "job": "llmrec ray-batch",
                    "workers": workers,
                    "cpus_per_worker": summary.cpus_per_worker,
                    "users_per_s": summary.users_per_s,
                    "rank_s": summary.rank_s,
                    "setup_s": summary.setup_s,
                    "total_s": summary.total_s,
                    "same_rankings": rankings(out) == reference,
                    "differing_lists": differing(rankings(out), reference),
                }
            )
    base = runs[0]
    for run in runs:
        run["vs_batch"] = round(run["users_per_s"] / base["users_per_s"], 3)
        run["total_vs_batch"] = round(base["total_s"] / run["total_s"], 3)
    report = {
        "benchmark": "bench_ray_batch",
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cores": cores,
        "python": platform.python_version(),
        "data": args.data,
        "users": args.users,
        "chunk_size": args.chunk_size,
        "config": {
            k: v for k, v in config.to_dict().items() if k in ("model", "template", "retriever", "dtype")
        },
        "runs": runs,
        "notes": "users_per_s: users over the ranking time (first chunk's start to last chunk's end); "
        "setup_s: loading (and for Ray the cluster's start and the workers' build) before it; "
        f"{cores} cores: N workers share them, 1 CPU (torch thread) each when N = cores",
    }
    print(f"\n{cpu_name()} ({cores} cores), {args.users} users, chunks of {args.chunk_size}")
    print(f"{'job':<18} {'workers':>7} {'users/s':>8} {'vs batch':>8} {'total s':>8} {'lists differ':>12}")
    for run in runs:
        print(
            f"{run['job']:<18} {run['workers']:>7} {run['users_per_s']:>8.2f} {run['vs_batch']:>7.2f}x "
            f"{run['total_s']:>8.1f} {run['differing_lists']:>12}"
        )
    atomic_write_json(args.out, report)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
