"""Fault injection with a real vLLM server: it is SIGKILLed under load, the service keeps
answering in the retriever's order (reranked false, with a reason) and is not ready, then it
reranks again once the server is back on the same port.

The scenario is eval/fault_service.py's at CI size (a handful of requests per phase): a vLLM
OpenAI-compatible server on CPU (the offline default model, float32) and the service in-process
under uvicorn. Skips when vLLM is not installed, unless LLMREC_REQUIRE_VLLM=1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import fault_service  # noqa: E402

REQUESTS = 4
"""Requests per phase (up, kill, down, back)."""


@pytest.fixture(scope="module")
def report(smollm_dir, ml_small_dir, tmp_path_factory, require_vllm):
    return fault_service.run_scenario(
        model=str(smollm_dir),
        requests=REQUESTS,
        concurrency=2,
        kill_after=1,
        config={"dataset": str(ml_small_dir)},
        log_dir=tmp_path_factory.mktemp("fault"),
        say=lambda message: None,
    )


def test_every_request_is_answered_with_200(report):
    for name, phase in report["phases"].items():
        assert phase["requests"] > 0, name
        assert not phase["http_errors"] and not phase["transport_errors"], (name, phase)
    assert report["phases"]["kill"]["requests"] == REQUESTS  # the kill phase too (requests in flight)


def test_reranked_while_the_server_is_up(report):
    up = report["phases"]["up"]
    assert up["reranked"] == up["requests"] == REQUESTS
    assert set(up["ready_statuses"]) == {200}


def test_retriever_fallback_and_not_ready_while_the_server_is_down(report):
    down = report["phases"]["down"]
    assert down["requests"] == REQUESTS and down["reranked"] == 0
    assert sum(down["fallback"].values()) == REQUESTS
    assert set(down["fallback"]) <= {"llm_error", "llm_unavailable", "llm_timeout"}, down["fallback"]
    assert set(down["ready_statuses"]) == {503}


def test_reranked_again_once_the_server_is_back(report):
    back = report["phases"]["back"]
    assert back["reranked"] == back["requests"] == REQUESTS
    assert set(back["ready_statuses"]) == {200}
    restart = report["restart"]
    assert restart["rerank_after_healthy_s"] is not None and restart["ready_after_healthy_s"] is not None


def test_the_script_check_agrees(report):
    assert fault_service.check(report) == []
