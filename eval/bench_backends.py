# ruff: noqa: E402  (OPENBLAS_NUM_THREADS must be set before numpy loads)
"""Benchmark: reranking throughput of the transformers and vLLM backends, in one run.

Every backend scores the same users' fused top-20 lists from ml-latest-small with the
same model and template (verbalizer: one token per prompt). Engine start-up is timed
apart; a warm-up batch runs before the clock starts. Prints users/second of each
backend and the ratios to the first one, and writes JSON (atomically). The same command
runs unchanged on a GPU machine (``--device auto`` picks CUDA; vLLM uses the GPU build).

    python eval/bench_backends.py --users 64                       # transformers vs vllm
    python eval/bench_backends.py --backends transformers,vllm,vllm-server
    python eval/bench_backends.py --backends transformers,vllm-server@auto,vllm-server@all
    python eval/bench_backends.py --scorer likelihood --users 16 \
        --adapter finetune/adapters/history-ml-latest-small/adapter   # the history LM's scorer

``NAME@BIND`` sets vLLM's CPU binding (``cpu_bind``: all, auto, nobind or a CPU list; default
all). Each vllm-server is its own process, so one run compares bindings; an in-process ``vllm``
engine binds once per process (the first one's setting holds).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from bench_common import rerank_inputs, timed_rerank
from bench_train import cpu_flags, cpu_name  # eval/ scripts beside this one

from llmrec.io import atomic_write_json
from llmrec.llm import load_reranker
from llmrec.llm.reranker import RerankParams


def _load(backend: str, args: argparse.Namespace, server_url: str | None, cpu_bind: str):
    options: dict = {"template": args.template, "batch_size": args.batch_size, "adapter": args.adapter}
    if args.scorer == "likelihood":
        options.update(scorer="likelihood", likelihood_header=args.likelihood_header)
    if backend == "transformers":
        options["device"] = args.device
    if backend == "vllm":
        options["cpu_bind"] = cpu_bind
    if backend == "vllm-server":
        options["server_url"] = server_url
    return load_reranker(args.model, backend=backend, **options)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="ml-latest-small")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--template", default="listwise")
    parser.add_argument("--backends", default="transformers,vllm", help="comma-separated, first = reference")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--warmup-users", type=int, default=4)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers batch size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapter", help="a PEFT adapter folder, on every backend")
    parser.add_argument(
        "--scorer",
        choices=["listwise", "likelihood"],
        default="listwise",
        help="likelihood: each candidate's PMI with the history (transformers and vllm)",
    )
    parser.add_argument(
        "--likelihood-header",
        default="A user's favourite movies, one per line:\n",
        help="the likelihood scorer's header (the history LM's)",
    )
    parser.add_argument("--out", default="eval/results/bench_backends.json")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if len(set(backends)) < len(backends):
        parser.error(f"--backends names one twice: {args.backends}")

    inputs = rerank_inputs(args.data, args.users + args.warmup_users, args.k, args.seed)
    warm, timed = inputs.rows(0, args.warmup_users), inputs.rows(args.warmup_users)
    params = RerankParams(progress=False)
    server = None
    results = {}
    try:
        for spec in backends:
            backend, _, cpu_bind = spec.partition("@")
            cpu_bind = cpu_bind or "all"
            start = time.perf_counter()
            url = None
            if backend == "vllm-server":
                from llmrec.llm.vllm_server import VLLMServer, free_port

                server = VLLMServer(model=args.model, port=free_port(), cpu_bind=cpu_bind).start()
                url = server.base_url
            reranker = _load(backend, args, url, cpu_bind)
            load_seconds = time.perf_counter() - start
            if warm.histories:
                timed_rerank(reranker, warm, params)
            row, scores = timed_rerank(reranker, timed, params)
            seconds = row["seconds"]
            results[spec] = row | {
                "load_seconds": round(load_seconds, 1),
                "device": str(getattr(reranker.backend, "device", "server")),
                "cpu_bind": None if backend == "transformers" else cpu_bind,
                "top1": [int(s.argmax()) for s in scores],
            }
            tokens = results[spec]["prompt_tokens_per_second"]
            print(
                f"{spec:18s} {results[spec]['users_per_second']:8.2f} users/s  "
                + (f"{tokens:9.1f} prompt tokens/s  " if tokens is not None else "")
                + f"({seconds:.1f} s; start-up {load_seconds:.0f} s)",
                flush=True,
            )
            del reranker
            if server is not None:
                server.stop()
                server = None
    finally:
        if server is not None:
            server.stop()
    ref = backends[0]
    ratios = {
        b: round(r["users_per_second"] / results[ref]["users_per_second"], 2) for b, r in results.items()
    }
    same_top1 = {b: sum(a == c for a, c in zip(r["top1"], results[ref]["top1"])) for b, r in results.items()}
    for b in backends[1:]:
        print(
            f"{b} / {ref}: {ratios[b]:.2f}x users/s; "
            f"same top-1 for {same_top1[b]}/{len(timed.histories)} users"
        )
    import torch

    payload = {
        "benchmark": "backends",
        "data": args.data,
        "model": args.model,
        "template": args.template,
        "scorer": args.scorer,
        "adapter": args.adapter,
        "candidates": args.k,
        "reference": ref,
        "results": results,
        "ratio_to_reference": ratios,
        "same_top1_as_reference": same_top1,
        "machine": {
            "cpu": cpu_name(),
            "native_bf16": any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16")),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(),
        },
    }
    atomic_write_json(args.out, payload)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
