"""The vLLM backends' settings, errors and label reading; no vLLM engine needed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from llmrec.cli import app
from llmrec.errors import ConfigError, LlmrecError
from llmrec.llm import load_backend
from llmrec.llm.vllm_backend import VLLMConfig, read_label_logprobs
from llmrec.llm.vllm_client import ServerUnavailable, VLLMServerBackend, VLLMServerConfig
from llmrec.llm.vllm_server import VLLMServer, free_port


def test_adapter_folder_without_adapter_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json"):
        VLLMConfig(adapter=str(tmp_path))
    with pytest.raises(ConfigError, match="adapter_config.json"):
        VLLMConfig(adapters={"office": str(tmp_path / "missing")})
    (tmp_path / "adapter_config.json").write_text("{}")
    assert VLLMConfig(adapter=str(tmp_path), adapters={"x": str(tmp_path)}).all_adapters() == {
        "x": str(tmp_path),
        "default": str(tmp_path),
    }


def test_a_missing_label_log_prob_raises_instead_of_defaulting():
    assert read_label_logprobs({5: -1.0, 7: -2.5}, [7, 5], "p0") == [-2.5, -1.0]
    with pytest.raises(LlmrecError, match=r"\[9\].*p3"):
        read_label_logprobs({5: -1.0}, [5, 9], "p3")


def test_server_settings_are_checked():
    with pytest.raises(ConfigError, match="base_url"):
        VLLMServerConfig(base_url="localhost:8000")
    with pytest.raises(ConfigError):
        VLLMServerConfig(retries=-1)
    assert VLLMServerConfig(base_url="http://h:1/v1/").base_url == "http://h:1/v1"


def test_unknown_backend_and_cpu_quantization_are_refused():
    with pytest.raises(ConfigError, match="transformers, vllm, vllm-server"):
        load_backend(backend="onnx")
    with pytest.raises(ConfigError, match="quantization"):
        load_backend(backend="vllm-server", quantization="4bit")


def test_server_command_serves_adapters_by_name_on_loopback(tmp_path, smollm_dir):
    (tmp_path / "adapter_config.json").write_text("{}")
    server = VLLMServer(model=str(smollm_dir), adapters={"office": str(tmp_path)}, port=8123)
    argv = server.command()
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8123"
    assert f"office={tmp_path}" in argv and "--enable-lora" in argv
    assert server.base_url == "http://127.0.0.1:8123/v1"


def test_serve_model_rejects_a_malformed_lora_flag():
    result = CliRunner().invoke(app, ["serve-model", "--lora", "office"])
    assert result.exit_code != 0 and "NAME=ADAPTER_FOLDER" in result.output


def test_server_down_gives_a_clear_error(smollm_dir):
    client = VLLMServerBackend(
        VLLMServerConfig(
            base_url=f"http://127.0.0.1:{free_port()}/v1", model=str(smollm_dir), retries=1, backoff_s=0.01
        )
    )
    with pytest.raises(ServerUnavailable, match="llmrec serve-model"):
        client.label_logprobs(["hello"], [client.tokenizer.encode("A", add_special_tokens=False)[0]])


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 once, then a completions body in vLLM's format (choices out of order)."""

    calls = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).calls == 1:
            self.send_response(503)
            self.end_headers()
            return
        ids = body["logprob_token_ids"]
        choices = [
            {
                "index": i,
                "text": "A",
                "logprobs": {"top_logprobs": [{f"token_id:{t}": -float(i + k) for k, t in enumerate(ids)}]},
            }
            for i in reversed(range(len(body["prompt"])))
        ]
        data = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_client_retries_a_failing_server_and_reads_choices_by_index(smollm_dir):
    httpd = HTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        client = VLLMServerBackend(
            VLLMServerConfig(
                base_url=f"http://127.0.0.1:{httpd.server_port}/v1",
                model=str(smollm_dir),
                retries=2,
                backoff_s=0.01,
                batch_size=2,
            )
        )
        got = client.label_logprobs(["a", "b", "c"], [11, 12])
    finally:
        httpd.shutdown()
    # prompt i of each request: -(i + k) for label k; the second request holds prompt "c" as its 0
    np.testing.assert_allclose(got, [[0, -1], [-1, -2], [0, -1]])
    assert _Flaky.calls == 3  # one 503 retried, then two requests


def test_cpu_bind_uses_every_allowed_core_and_reserves_none_by_default(monkeypatch):
    from llmrec.llm.vllm_backend import apply_cpu_bind, cpu_bind_env

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 5}, raising=False)
    assert cpu_bind_env("all") == {"VLLM_CPU_OMP_THREADS_BIND": "0-2,5", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert cpu_bind_env("auto") == {}  # vLLM's own choice
    assert cpu_bind_env("nobind") == {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert cpu_bind_env("0,2-3")["VLLM_CPU_OMP_THREADS_BIND"] == "0,2-3"
    for bad in ("0-", "cores", "1;2"):
        with pytest.raises(ConfigError, match="cpu_bind"):
            VLLMConfig(cpu_bind=bad)
    # What the user exported wins over the default.
    env = {"VLLM_CPU_OMP_THREADS_BIND": "1"}
    apply_cpu_bind(env, "all")
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def test_the_vllm_server_process_gets_the_cpu_binding(tmp_path, monkeypatch, smollm_dir):
    """The server's environment, as `start` builds it (the process itself is not started)."""
    import subprocess

    seen = {}

    class Started(Exception):
        pass

    def fake_popen(argv, stdout, stderr, env):
        seen.update(env)
        raise Started

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    monkeypatch.setattr("llmrec.llm.vllm_backend.import_vllm", lambda: None)
    server = VLLMServer(model=str(smollm_dir), port=free_port(), cpu_bind="0", log_file=str(tmp_path / "log"))
    with pytest.raises(Started):
        server.start()
    assert seen["VLLM_CPU_OMP_THREADS_BIND"] == "0" and seen["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_config_refuses_a_malformed_cpu_bind_naming_it():
    from llmrec.config import RecommendConfig

    with pytest.raises(ConfigError, match="cpu_bind.*0-x"):
        RecommendConfig(cpu_bind="0-x")
    result = CliRunner().invoke(app, ["serve-model", "--cpu-bind", "x"])
    assert result.exit_code != 0 and "cpu_bind" in result.output
