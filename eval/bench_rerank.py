# ruff: noqa: E402  (OPENBLAS_NUM_THREADS must be set before numpy loads)
"""Benchmark: LLM reranking throughput on this machine, verbalizer vs generated list.

Both paths rerank the same users' fused top-20 lists from ml-latest-small with
the same model in one run; prints users/second and prompt tokens/second of
each and their ratio, and writes JSON (atomically).

    python eval/bench_rerank.py --users 16 --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from bench_common import rerank_inputs, timed_rerank

from llmrec.io import atomic_write_json
from llmrec.llm import load_reranker
from llmrec.llm.prompting import PromptTemplate
from llmrec.llm.reranker import LLMReranker, RerankParams


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="ml-latest-small")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="eval/results/bench_rerank.json")
    args = parser.parse_args()

    inputs = rerank_inputs(args.data, args.users, args.k, args.seed)

    start = time.perf_counter()
    verbalizer = load_reranker(args.model, batch_size=args.batch_size, device=args.device)
    load_seconds = time.perf_counter() - start
    generator = LLMReranker(verbalizer.backend, PromptTemplate.load("listwise_generate"))
    results = {}
    for name, reranker, params in (
        ("verbalizer", verbalizer, RerankParams(progress=True)),
        ("generate", generator, RerankParams(mode="generate", max_new_tokens=args.max_new_tokens)),
    ):
        results[name], _ = timed_rerank(reranker, inputs, params)
        seconds = results[name]["seconds"]
        print(
            f"{name:10s} {results[name]['users_per_second']:8.3f} users/s  "
            f"{results[name]['prompt_tokens_per_second']:9.1f} prompt tokens/s  ({seconds:.1f} s)"
        )
    ratio = results["verbalizer"]["users_per_second"] / results["generate"]["users_per_second"]
    print(f"verbalizer / generate speed ratio: {ratio:.1f}x")
    backend = verbalizer.backend
    payload = {
        "benchmark": "rerank",
        "data": args.data,
        "model": args.model,
        "device": str(backend.device),
        "dtype": str(backend.model.dtype),
        "batch_size": args.batch_size,
        "candidates": args.k,
        "max_new_tokens": args.max_new_tokens,
        "load_seconds": round(load_seconds, 2),
        "results": results,
        "ratio_verbalizer_over_generate": round(ratio, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    atomic_write_json(args.out, payload)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
