"""Hostile inputs to the LLM stage and tuning: each gets a clear error before work starts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from llmrec.llm.vllm_client import ServerUnavailable, VLLMServerBackend, VLLMServerConfig
from llmrec.llm.vllm_server import free_port

# --- the vLLM server client ------------------------------------------------------------------


@contextmanager
def _tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback TCP server that runs ``handle`` on each accepted connection; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def _client(port: int, **options) -> VLLMServerBackend:
    """A client without a tokenizer (``served_models`` needs none)."""
    client = VLLMServerBackend.__new__(VLLMServerBackend)
    client.config = VLLMServerConfig(base_url=f"http://127.0.0.1:{port}/v1", **options)
    client.model_name, client.adapter_name = client.config.model, None
    return client


def test_a_server_that_accepts_and_never_answers_fails_within_the_read_timeout():
    with _tcp_server(lambda conn: None) as port:
        client = _client(port, read_timeout_s=1.0, retries=1, backoff_s=0.01)
        start = time.monotonic()
        with pytest.raises(ServerUnavailable) as err:
            client.served_models()
        elapsed = time.monotonic() - start
    assert elapsed < 10
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/v1/models" in message
    assert "no reply within read_timeout_s=1 s" in message and "after 2 tries" in message


def test_a_server_that_answers_garbage_is_unavailable_not_a_traceback():
    def garbage(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"garbage\r\n\r\n")
        conn.close()

    with _tcp_server(garbage) as port:
        start = time.monotonic()
        with pytest.raises(ServerUnavailable, match="not an HTTP reply") as err:
            _client(port, retries=0).served_models()
    assert time.monotonic() - start < 10
    assert f"127.0.0.1:{port}" in str(err.value) and "after 1 try" in str(err.value)


def test_a_closed_port_says_connection_refused():
    with pytest.raises(ServerUnavailable, match="connection refused.*after 1 try"):
        _client(free_port(), retries=0).served_models()


def test_timeouts_are_checked():
    from llmrec.errors import ConfigError

    with pytest.raises(ConfigError, match="read_timeout_s"):
        VLLMServerConfig(read_timeout_s=0)
    with pytest.raises(ConfigError, match="connect_timeout_s"):
        VLLMServerConfig(connect_timeout_s=-1)


# --- template and adapter, checked before a model loads --------------------------------------


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if anything starts loading a model or a tokenizer."""
    import llmrec.finetune.trainer as trainer
    import llmrec.llm.transformers_backend as tb

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(tb, "load_causal_lm", refuse)
    monkeypatch.setattr(tb, "resolve_model", refuse)
    monkeypatch.setattr(trainer, "resolve_model", refuse)


def _fast(call: Callable[[], object], error: type[Exception], match: str) -> None:
    start = time.monotonic()
    with pytest.raises(error, match=match):
        call()
    assert time.monotonic() - start < 2


def test_build_reranker_checks_template_and_adapter_first(tmp_path, no_model_loads):
    from llmrec.config import RecommendConfig
    from llmrec.errors import ConfigError
    from llmrec.pipeline import build_reranker

    _fast(
        lambda: build_reranker(RecommendConfig(template="nosuch")),
        ConfigError,
        r"template='nosuch': no such template; available: .*listwise",
    )
    missing = tmp_path / "missing"
    _fast(
        lambda: build_reranker(RecommendConfig(adapter=str(missing))), ConfigError, "adapter=.*no such folder"
    )
    _fast(
        lambda: build_reranker(RecommendConfig(adapter=str(tmp_path))),
        ConfigError,
        r"adapter=.*not a PEFT adapter folder \(no adapter_config.json\)",
    )
    _fast(
        lambda: build_reranker(RecommendConfig(backend="vllm", adapter=str(tmp_path))),
        ConfigError,
        "adapter_config.json",
    )


def test_finetune_checks_template_and_adapter_before_data_and_model(tmp_path, monkeypatch, no_model_loads):
    import llmrec.finetune.run as run
    from llmrec.errors import ConfigError
    from llmrec.finetune import FinetuneConfig

    monkeypatch.setattr(run, "prepare_data", lambda config: pytest.fail("data loaded first"))
    out = str(tmp_path / "run")
    _fast(
        lambda: run.run_finetune(FinetuneConfig(template="nosuch", output_dir=out)), ConfigError, "template="
    )
    config = FinetuneConfig(adapter=str(tmp_path), output_dir=out)
    _fast(lambda: run.run_finetune(config), ConfigError, "not a PEFT adapter folder")
    _fast(lambda: run.finetune(config, None), ConfigError, "not a PEFT adapter folder")


# --- --resume with other settings than the checkpoints' --------------------------------------


def _previous_run(tmp_path, **settings):
    """A run folder as a killed run leaves it: run_config.json and one complete checkpoint."""
    from llmrec.finetune import FinetuneConfig
    from llmrec.finetune.artifacts import RUN_CONFIG, run_record
    from llmrec.io import atomic_write_json

    out = tmp_path / "run"
    first = FinetuneConfig(output_dir=str(out), seed=3, threads=2, **settings)
    atomic_write_json(out / RUN_CONFIG, run_record(out, first, resuming=False))
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    return out


def test_resume_with_other_training_settings_is_refused_unless_forced(tmp_path):
    from llmrec.errors import LlmrecError
    from llmrec.finetune import FinetuneConfig
    from llmrec.finetune.trainer import check_inputs

    out = _previous_run(tmp_path)
    same = dict(output_dir=str(out), resume=True)
    with pytest.raises(LlmrecError, match=r"seed: 3 -> 4.*--force-resume"):
        check_inputs(FinetuneConfig(seed=4, threads=2, **same))
    with pytest.raises(LlmrecError, match=r"learning_rate: 0.0002 -> 0.001; seed: 3 -> 4"):
        check_inputs(FinetuneConfig(seed=4, learning_rate=1e-3, **same))
    # where and how fast it runs may change
    start = check_inputs(FinetuneConfig(seed=3, threads=1, eval_steps=50, save_steps=50, **same))
    assert start.resume_from == out / "checkpoints" / "checkpoint-2" and start.record["forced_from"] == []
    forced = check_inputs(FinetuneConfig(seed=4, force_resume=True, **same)).record
    assert forced["config"]["seed"] == 4
    assert forced["forced_from"][0]["config"]["seed"] == 3 and forced["forced_from"][0]["changes"] == {
        "seed": [3, 4]
    }
    with pytest.raises(LlmrecError, match="already holds checkpoints"):
        check_inputs(FinetuneConfig(seed=3, output_dir=str(out)))


def test_config_changes_ignores_resumable_fields():
    from llmrec.finetune.artifacts import config_changes

    old = {"seed": 1, "threads": 2, "target_modules": ["q_proj"], "output_dir": "a"}
    assert config_changes(old, {**old, "threads": 8, "output_dir": "b"}) == {}
    assert config_changes(old, {**old, "target_modules": ("q_proj", "v_proj")}) == {
        "target_modules": (["q_proj"], ["q_proj", "v_proj"])
    }
