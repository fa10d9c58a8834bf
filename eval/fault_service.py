"""Fault run: the vLLM server dies under load, the service falls back, then reranks again.

Starts a real vLLM OpenAI-compatible server (:class:`~llmrec.llm.vllm_server.VLLMServer`, the
offline default model on CPU, in its own process group) and the service in-process (uvicorn in
a thread, config ``backend: vllm-server`` pointing at that server), then posts ``/recommend``
requests (known users of ml-latest-small; httpx, ``--concurrency`` clients, a fixed count per
phase) in five phases:

* ``up``: the server answers; every answer must be reranked, ``/ready`` 200.
* ``kill``: the server's process group gets SIGKILL once ``--kill-after`` answers of this
  phase are back, with the rest in flight; every answer must still be HTTP 200.
* ``down``: the server is gone; every answer must be 200 with ``reranked: false`` and a reason,
  ``/ready`` 503.
* ``restarting``: one client keeps posting (one request at a time) while the server restarts on
  the same port, until the service reranks again; every answer must be 200.
* ``back``: every answer must be reranked again, ``/ready`` 200.

Prints the CPU, a table of answers by kind per phase (reranked; fallback by reason; HTTP
errors; transport errors), the ``/ready`` statuses seen and the time until the service reranked
again after the restart; writes JSON (atomically); exits 1 when any request got no 200 or a
phase did not behave as required. Every loop is bounded in count and time; loopback only.

    python eval/fault_service.py --requests 24 --concurrency 4 --out eval/reports/fault_service.json
    python eval/fault_service.py --requests 4 --concurrency 2 --out eval/results/fault_service_smoke.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_train import cpu_name  # eval/ script beside this one

DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": "ml-latest-small",
    "retriever": "itemknn",
    "num_candidates": 10,
    "n": 5,
    "template": "listwise_compact",
    "max_prompt_tokens": 512,
    "backend": "vllm-server",
    "retries": 1,
    "connect_timeout_s": 2.0,
    "read_timeout_s": 60.0,
}
"""A small, quick recommend config (itemknn top-10, compact prompt) whose LLM stage is a vLLM server."""

DEFAULT_SERVICE: dict[str, Any] = {
    "rate_limit_per_s": 0,
    "deadline_s": 30.0,
    "ready_timeout_s": 2.0,
    "log_level": "warning",
}

PHASES = ("up", "kill", "down", "restarting", "back")


# --- the vLLM server, killable as a process group -------------------------------------------


def killable_server(**kwargs: Any):
    """A :class:`VLLMServer` whose process leads its own process group (``setsid`` execs it in
    place, so the pid is the group id): SIGKILL to the group takes its engine processes too."""
    from llmrec.llm.vllm_server import VLLMServer

    class KillableVLLMServer(VLLMServer):
        def command(self) -> list[str]:
            return [shutil.which("setsid") or "setsid", *super().command()]

        def kill_group(self) -> None:
            """SIGKILL every process of the server's group, and reap the leader."""
            assert self.process is not None
            pgid = os.getpgid(self.process.pid)
            if pgid != self.process.pid or pgid == os.getpgid(0):
                raise RuntimeError(f"server pid {self.process.pid} does not lead its own group ({pgid})")
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=30)

        def stop(self) -> None:
            super().stop()
            if self.process is not None:  # leftovers of the group (engine processes)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)

    return KillableVLLMServer(**kwargs)


# --- the service, in-process under uvicorn --------------------------------------------------


class ServiceThread:
    """The app under uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="llmrec-service", daemon=True)

    def start(self, timeout_s: float = 60.0) -> ServiceThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start at {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def build_app(config_values: dict[str, Any], service_values: dict[str, Any]):
    """The service over ``config_values`` (a recommend config), as ``llmrec serve`` builds it."""
    from llmrec.service import build_parts, create_app_from_parts, load_service_config

    config, settings = load_service_config(
        None, overrides=config_values, service_overrides=service_values, environ={}
    )
    return create_app_from_parts(build_parts(config), settings)


# --- load and outcomes ----------------------------------------------------------------------


def kind_of(response: httpx.Response | None, error: Exception | None = None) -> str:
    """``reranked``, ``fallback:<reason>``, ``http_<status>`` or ``transport:<error>``."""
    if response is None:
        return f"transport:{type(error).__name__}"
    if response.status_code != 200:
        return f"http_{response.status_code}"
    body = response.json()
    if body.get("reranked") is True and body.get("reason") is None:
        return "reranked"
    return f"fallback:{body.get('reason')}"


@dataclass
class Phase:
    name: str
    kinds: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        counts = Counter(self.kinds)
        lat = sorted(self.latencies_s)
        return {
            "requests": len(self.kinds),
            "reranked": counts.get("reranked", 0),
            "fallback": {
                k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("fallback:")
            },
            "http_errors": {k: v for k, v in sorted(counts.items()) if k.startswith("http_")},
            "transport_errors": {k: v for k, v in sorted(counts.items()) if k.startswith("transport:")},
            "ready_statuses": self.ready,
            "wall_s": round(self.wall_s, 3),
            "max_latency_s": round(lat[-1], 3) if lat else None,
            "median_latency_s": round(lat[len(lat) // 2], 3) if lat else None,
        }


class Load:
    """Posts known users' requests to the service; each answer is classified into a phase."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.next_user = 0

    def bodies(self, count: int) -> list[dict[str, Any]]:
        out = [{"user": str(1 + (self.next_user + i) % 610)} for i in range(count)]
        self.next_user += count
        return out

    async def post(self, client: httpx.AsyncClient, phase: Phase, body: dict[str, Any]) -> str:
        start = time.perf_counter()
        try:
            kind = kind_of(await client.post("/recommend", json=body))
        except httpx.HTTPError as err:
            kind = kind_of(None, err)
        phase.latencies_s.append(time.perf_counter() - start)
        phase.kinds.append(kind)
        return kind

    async def ready(self, client: httpx.AsyncClient, phase: Phase) -> int:
        try:
            status = (await client.get("/ready")).status_code
        except httpx.HTTPError:
            status = 0
        phase.ready.append(status)
        return status

    def client(self, concurrency: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
        return httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, limits=limits)

    async def run_phase(
        self, phase: Phase, count: int, concurrency: int, kill_after: int | None = None, kill: Any = None
    ) -> None:
        """``count`` requests, ``concurrency`` at a time; /ready before and after. With
        ``kill``: called (in a thread) once ``kill_after`` answers are back, requests in flight."""
        gate = asyncio.Semaphore(concurrency)
        answered = asyncio.Event()
        done = 0

        async with self.client(concurrency) as client:
            await self.ready(client, phase)

            async def one(body: dict[str, Any]) -> None:
                nonlocal done
                async with gate:
                    await self.post(client, phase, body)
                done += 1
                if kill_after is not None and done >= kill_after:
                    answered.set()

            async def killer() -> None:
                await answered.wait()
                await asyncio.to_thread(kill)

            start = time.perf_counter()
            tasks = [asyncio.create_task(one(b)) for b in self.bodies(count)]
            if kill is not None:
                tasks.append(asyncio.create_task(killer()))
            await asyncio.gather(*tasks)
            phase.wall_s = time.perf_counter() - start
            await self.ready(client, phase)

    async def run_restart(
        self, phase: Phase, restart: Any, max_requests: int, timeout_s: float
    ) -> dict[str, float | None]:
        """One request at a time while ``restart`` (blocking: returns when the server answers)
        runs in a thread, until the service reranks again after it returned; timings."""
        times: dict[str, float | None] = {
            "restart_s": None,
            "rerank_after_healthy_s": None,
            "rerank_after_restart_call_s": None,
            "ready_after_healthy_s": None,
        }
        start = time.perf_counter()
        task = asyncio.create_task(asyncio.to_thread(restart))
        healthy: float | None = None
        async with self.client(1) as client:
            await self.ready(client, phase)
            while len(phase.kinds) < max_requests and time.perf_counter() - start < timeout_s:
                if task.done() and healthy is None:
                    task.result()  # a failed restart raises here
                    healthy = time.perf_counter()
                    times["restart_s"] = healthy - start
                kind = await self.post(client, phase, self.bodies(1)[0])
                # only answers to requests sent after the server was healthy count as "back"
                if kind == "reranked" and healthy is not None:
                    now = time.perf_counter()
                    times["rerank_after_healthy_s"] = now - healthy
                    times["rerank_after_restart_call_s"] = now - start
                    break
                await asyncio.sleep(0.5 if healthy is None else 0.1)
            if healthy is None and task.done():
                task.result()
                healthy = time.perf_counter()
                times["restart_s"] = healthy - start
            if healthy is not None:
                while time.perf_counter() - healthy < timeout_s:
                    if await self.ready(client, phase) == 200:
                        times["ready_after_healthy_s"] = time.perf_counter() - healthy
                        break
                    await asyncio.sleep(0.5)
        phase.wall_s = time.perf_counter() - start
        if not task.done():
            await task  # bounded by the server's own startup timeout
        return times


# --- the scenario ---------------------------------------------------------------------------


def run_scenario(
    *,
    model: str = "smollm2-135m-instruct",
    requests: int = 8,
    concurrency: int = 2,
    kill_after: int | None = None,
    config: dict[str, Any] | None = None,
    service: dict[str, Any] | None = None,
    server_args: dict[str, Any] | None = None,
    request_timeout_s: float = 120.0,
    restart_timeout_s: float = 900.0,
    log_dir: str | Path | None = None,
    say: Any = print,
) -> dict[str, Any]:
    """The five phases against a fresh vLLM server and service; the report (see :func:`check`)."""
    from llmrec.llm.vllm_server import free_port

    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="llmrec-fault-"))
    kill_after = max(1, requests // 3) if kill_after is None else kill_after
    kill_after = max(1, min(kill_after, requests - 1))  # some requests still in flight at the kill
    vllm_port = free_port()
    server_kwargs = dict(
        model=model,
        port=vllm_port,
        dtype="float32",
        kv_cache_gib=1,
        extra_args=["--enforce-eager"],
        startup_timeout_s=restart_timeout_s,
        log_file=str(log_dir / "vllm.log"),
    )
    server_kwargs.update(server_args or {})
    config_values = {**DEFAULT_CONFIG, "model": model, **(config or {})}
    config_values["server_url"] = f"http://127.0.0.1:{vllm_port}/v1"
    service_values = {**DEFAULT_SERVICE, **(service or {})}

    phases = {name: Phase(name) for name in PHASES}
    events: dict[str, float] = {}
    t0 = time.perf_counter()
    server = killable_server(**server_kwargs)
    say(f"starting the vLLM server on port {vllm_port} (log {server.log_file})")
    server.start()
    events["vllm_started_s"] = time.perf_counter() - t0
    say(f"vLLM server ready after {events['vllm_started_s']:.1f} s; building the service")
    svc = None
    try:
        app = build_app(config_values, service_values)
        svc = ServiceThread(app, free_port()).start()
        load = Load(svc.url, request_timeout_s)
        asyncio.run(load.run_phase(phases["up"], 1, 1))  # warm-up, not counted
        phases["up"] = Phase("up")

        say("phase up")
        asyncio.run(load.run_phase(phases["up"], requests, concurrency))

        def kill() -> None:
            events["killed_at_s"] = time.perf_counter() - t0
            server.kill_group()

        say(f"phase kill: SIGKILL the server's process group after {kill_after} answers")
        asyncio.run(load.run_phase(phases["kill"], requests, concurrency, kill_after, kill))
        say("phase down")
        asyncio.run(load.run_phase(phases["down"], requests, concurrency))
        say("phase restarting: the server restarts on the same port; one client keeps posting")
        restart = asyncio.run(
            load.run_restart(
                phases["restarting"], server.start, max_requests=10_000, timeout_s=restart_timeout_s
            )
        )
        say("phase back")
        asyncio.run(load.run_phase(phases["back"], requests, concurrency))
    finally:
        if svc is not None:
            svc.stop()
        server.stop()
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "model": model,
        "config": config_values,
        "service": service_values,
        "requests_per_phase": requests,
        "concurrency": concurrency,
        "kill_after_answers": kill_after,
        "events": {k: round(v, 3) for k, v in events.items()},
        "restart": {k: None if v is None else round(v, 3) for k, v in restart.items()},
        "phases": {name: p.summary() for name, p in phases.items()},
        "wall_s": round(time.perf_counter() - t0, 3),
        "vllm_log": server.log_file,
    }


def check(report: dict[str, Any]) -> list[str]:
    """What went against the requirement (empty: the service behaved)."""
    problems = []
    phases = report["phases"]
    for name, p in phases.items():
        bad = {**p["http_errors"], **p["transport_errors"]}
        if bad:
            problems.append(f"{name}: answers other than HTTP 200: {bad}")
        if p["requests"] == 0:
            problems.append(f"{name}: no request answered")
    for name in ("up", "back"):
        p = phases[name]
        if p["reranked"] != p["requests"]:
            problems.append(f"{name}: {p['reranked']} of {p['requests']} reranked (want all)")
        if any(s != 200 for s in p["ready_statuses"]):
            problems.append(f"{name}: /ready answered {p['ready_statuses']} (want 200)")
    down = phases["down"]
    if down["reranked"] or sum(down["fallback"].values()) != down["requests"] or "None" in down["fallback"]:
        problems.append(f"down: want every answer reranked false with a reason, got {down}")
    if any(s != 503 for s in down["ready_statuses"]):
        problems.append(f"down: /ready answered {down['ready_statuses']} (want 503)")
    if report["restart"]["rerank_after_healthy_s"] is None:
        problems.append("restarting: the service did not rerank again after the server came back")
    if report["restart"]["ready_after_healthy_s"] is None:
        problems.append("restarting: /ready did not answer 200 after the server came back")
    return problems


def table(report: dict[str, Any]) -> str:
    lines = [
        "| phase | requests | reranked | fallback by reason | HTTP errors | transport errors "
        "| /ready | wall s |",
        "|---|---:|---:|---|---|---|---|---:|",
    ]
    fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "-"  # noqa: E731
    for name, p in report["phases"].items():
        lines.append(
            f"| {name} | {p['requests']} | {p['reranked']} | {fmt(p['fallback'])} "
            f"| {fmt(p['http_errors'])} | {fmt(p['transport_errors'])} "
            f"| {','.join(map(str, p['ready_statuses']))} | {p['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    from llmrec.io import atomic_write_json

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="served model (offline default)")
    parser.add_argument("--requests", type=int, default=24, help="requests per phase (up, kill, down, back)")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients")
    parser.add_argument("--kill-after", type=int, help="kill-phase answers before SIGKILL")
    parser.add_argument("--retriever", default=DEFAULT_CONFIG["retriever"])
    parser.add_argument("--num-candidates", type=int, default=DEFAULT_CONFIG["num_candidates"])
    parser.add_argument("--request-timeout", type=float, default=120.0, help="client seconds per request")
    parser.add_argument("--restart-timeout", type=float, default=900.0, help="server start seconds")
    parser.add_argument("--out", default="eval/results/fault_service.json")
    parser.add_argument("--verbose", action="store_true", help="show the service's fallback warnings")
    args = parser.parse_args()
    if not args.verbose:  # one warning per failed LLM call: the table counts them
        logging.getLogger("llmrec").setLevel(logging.ERROR)

    cpu = cpu_name()
    print(f"CPU: {cpu} ({os.cpu_count()} cores); load {os.getloadavg()}")
    report = run_scenario(
        model=args.model,
        requests=args.requests,
        concurrency=args.concurrency,
        kill_after=args.kill_after,
        config={"retriever": args.retriever, "num_candidates": args.num_candidates},
        request_timeout_s=args.request_timeout,
        restart_timeout_s=args.restart_timeout,
    )
    problems = check(report)
    report["problems"] = problems
    report["command"] = " ".join(sys.argv)
    print()
    print(table(report))
    r = report["restart"]
    print(
        f"\nCPU: {cpu}; server killed {report['events']['killed_at_s']:.1f} s into the run; restart took "
        f"{r['restart_s']:.1f} s; reranked again {r['rerank_after_healthy_s']:.2f} s after the server "
        f"answered ({r['rerank_after_restart_call_s']:.1f} s after the restart began); /ready 200 "
        f"{r['ready_after_healthy_s']:.2f} s after it answered; total {report['wall_s']:.0f} s"
        if r["rerank_after_healthy_s"] is not None and r["ready_after_healthy_s"] is not None
        else f"\nCPU: {cpu}; restart timings: {r}"
    )
    atomic_write_json(args.out, report)
    print(f"written: {args.out}")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
