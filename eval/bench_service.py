"""Benchmark: `llmrec serve` under load, micro-batched vs one request at a time, in one run.

For each LLM batch size (``--batch-sizes``, default 16 then 1) the script starts
``llmrec serve`` in a subprocess on loopback (the offline default model unless ``--config``
says otherwise), waits for ``/ready``, sends a few warm-up requests, then at each concurrency
(``--concurrency``) posts a fixed number of ``/recommend`` requests (known users of
ml-latest-small) with httpx + asyncio, and stops the server with SIGINT. Prints the CPU, a
table of requests/s, p50/p95/p99 latency, errors and LLM fallbacks per run, and the
batched/one-by-one throughput ratio per concurrency; writes JSON (atomically).
Every request loop is bounded in count and time, and talks to 127.0.0.1 only.

    python eval/bench_service.py --requests 32 --concurrency 1,4,16 --out eval/reports/bench_service.json
    python eval/bench_service.py --requests 4 --concurrency 1,2 --out eval/results/bench_service_smoke.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from bench_train import cpu_name  # eval/ script beside this one

from llmrec.io import atomic_write_json

DEFAULT_CONFIG = {"dataset": "ml-latest-small", "retriever": "fused", "num_candidates": 20, "n": 10}
"""`llmrec recommend`'s defaults: the fused top-20 reranked by the offline default model."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``llmrec serve --config FILE`` in a subprocess on 127.0.0.1, with the log in a file."""

    def __init__(self, config: Path, max_batch_size: int, args: argparse.Namespace, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "LLMREC_SERVICE_HOST": "127.0.0.1",
            "LLMREC_SERVICE_PORT": str(self.port),
            "LLMREC_SERVICE_MAX_BATCH_SIZE": str(max_batch_size),
            "LLMREC_SERVICE_MAX_WAIT_MS": str(args.max_wait_ms),
            "LLMREC_SERVICE_QUEUE_SIZE": str(max(256, 4 * args.max_concurrency)),
            "LLMREC_SERVICE_DEADLINE_S": str(args.request_timeout),
            "LLMREC_SERVICE_RATE_LIMIT_PER_S": "0",
            "LLMREC_SERVICE_LOG_LEVEL": "warning",
        }
        env.pop("LLMREC_SERVICE_API_KEY", None)
        self.handle = log.open("w")
        command = [sys.executable, "-m", "llmrec.cli", "serve", "--config", str(config)]
        self.process = subprocess.Popen(command, env=env, stdout=self.handle, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /ready answered 200; RuntimeError (with the log's tail) otherwise."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the service at {self.url} was not ready within {timeout_s:g} s:\n{tail}")

    def stop(self) -> None:
        """SIGINT (graceful shutdown), then kill after 60 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()


async def load_run(
    url: str, bodies: list[dict[str, Any]], concurrency: int, timeout_s: float
) -> dict[str, Any]:
    """POST every body with at most ``concurrency`` in flight; latencies and outcomes."""
    latencies: list[float] = []
    errors: list[str] = []
    reasons: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            async with gate:
                start = time.perf_counter()
                try:
                    response = await client.post("/recommend", json=body)
                except httpx.HTTPError as err:
                    errors.append(type(err).__name__)
                    return
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}")
                    return
                reason = response.json().get("reason")
                if reason is not None:
                    reasons[reason] = reasons.get(reason, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000.0
    pct = (lambda q: float(np.percentile(ms, q))) if len(ms) else (lambda q: float("nan"))
    return {
        "concurrency": concurrency,
        "requests": len(bodies),
        "wall_s": wall,
        "requests_per_s": len(bodies) / wall,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "fallbacks": reasons,
    }


def request_bodies(count: int, offset: int) -> list[dict[str, Any]]:
    """Known users of ml-latest-small (ids 1..610), a different slice per run."""
    return [{"user": str(1 + (offset + i) % 610)} for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, help="a `recommend` config file (default: recommend's defaults)"
    )
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--batch-sizes", default="16,1", help="LLM max batch sizes: batched first, 1 last")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=2, help="requests before the clock starts")
    parser.add_argument(
        "--start-timeout", type=float, default=600.0, help="seconds for the service to be ready"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds per request (and deadline)"
    )
    parser.add_argument("--out", default="eval/results/bench_service.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    args.max_concurrency = max(levels)

    work = Path(tempfile.mkdtemp(prefix="llmrec-bench-service-"))
    config = args.config
    if config is None:
        config = work / "serve.yaml"
        config.write_text(yaml.safe_dump(DEFAULT_CONFIG), encoding="utf-8")
    cpu = cpu_name()
    print(f"CPU: {cpu} ({os.cpu_count()} cores); load {os.getloadavg()}; config {config}")

    runs: list[dict[str, Any]] = []
    startup: dict[str, float] = {}
    for size in sizes:
        server = Server(config, size, args, work / f"serve-batch{size}.log")
        try:
            startup[str(size)] = server.wait_ready(args.start_timeout)
            print(f"max batch {size}: ready after {startup[str(size)]:.1f} s at {server.url}")
            asyncio.run(load_run(server.url, request_bodies(args.warmup, 600), 1, args.request_timeout))
            for i, level in enumerate(levels):
                result = asyncio.run(
                    load_run(
                        server.url,
                        request_bodies(args.requests, i * args.requests),
                        level,
                        args.request_timeout,
                    )
                )
                runs.append({"max_batch_size": size, **result})
                print(
                    f"  concurrency {level:>3}: {result['requests_per_s']:.3f} req/s, "
                    f"p50 {result['p50_ms']:.0f} ms, errors {result['errors']}"
                )
        finally:
            server.stop()

    print()
    print("| max batch | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | errors | fallbacks |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(r["fallbacks"].items())) or "-"
        print(
            f"| {r['max_batch_size']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.3f} | "
            f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | {fallbacks} |"
        )
    ratios: dict[str, float] = {}
    if len(sizes) > 1:
        batched, single = sizes[0], sizes[-1]
        by = {(r["max_batch_size"], r["concurrency"]): r["requests_per_s"] for r in runs}
        for level in levels:
            ratios[str(level)] = by[(batched, level)] / by[(single, level)]
            print(
                f"concurrency {level}: max batch {batched} / max batch {single} throughput = "
                f"{ratios[str(level)]:.2f}x"
            )
    atomic_write_json(
        args.out,
        {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "config": yaml.safe_load(config.read_text(encoding="utf-8")),
            "requests_per_level": args.requests,
            "max_wait_ms": args.max_wait_ms,
            "startup_s": startup,
            "runs": runs,
            "throughput_ratio_batched_vs_one_by_one": ratios,
            "command": " ".join(sys.argv),
        },
    )
    print(f"written: {args.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
