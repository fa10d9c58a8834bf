"""A local vLLM OpenAI-compatible server process (the client is :mod:`llmrec.llm.vllm_client`).

:class:`VLLMServer` starts ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve``
is the same server; the CPU wheel's ``vllm`` script does not start) on loopback, waits until
``/health`` answers and stops it again; ``llmrec serve-model`` is its command line.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llmrec.errors import LlmrecError
from llmrec.llm.models import check_adapter_folder, resolve_dtype, resolve_model

logger = logging.getLogger(__name__)


@dataclass
class VLLMServer:
    """A local vLLM OpenAI-compatible server process; a context manager.

    ``with VLLMServer(model="smollm2-135m-instruct", adapters={"office": "runs/x/adapter"}) as s:``
    then ``VLLMServerBackend(VLLMServerConfig(base_url=s.base_url, adapter="office"))``.
    """

    model: str = "smollm2-135m-instruct"
    adapters: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    """As the in-process backend: float32 on CPUs without native bf16."""
    max_model_len: int = 2048
    max_lora_rank: int = 16
    kv_cache_gib: float = 2.0
    cpu_bind: str = "all"
    """CPU only: the cores the server computes on (see ``vllm_backend.CPU_BIND_CHOICES``)."""
    startup_timeout_s: float = 900.0
    extra_args: list[str] = field(default_factory=list)
    log_file: str | None = None
    """Server output goes here (default: a temporary file named in errors)."""
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from llmrec.llm.vllm_backend import cpu_bind_env

        cpu_bind_env(self.cpu_bind)  # a malformed value fails here, not in the child process

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's argv."""
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            resolve_model(self.model),
            "--served-model-name",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            resolve_dtype(self.dtype, device),
            "--max-model-len",
            str(self.max_model_len),
            "--enable-prefix-caching",
        ]
        if self.adapters:
            argv += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--lora-modules"]
            for name, path in sorted(self.adapters.items()):
                check_adapter_folder(path, f"lora {name}")
                argv.append(f"{name}={os.path.abspath(path)}")
        return argv + list(self.extra_args)

    def start(self) -> VLLMServer:
        """Start the process and wait until it answers (or fail with its log's tail)."""
        from llmrec.llm.vllm_backend import apply_cpu_bind, import_vllm

        import_vllm()  # a clear install hint instead of a dead child process
        if _port_in_use(self.host, self.port):
            raise LlmrecError(f"port {self.port} on {self.host} is already in use: pass another --port")
        argv = self.command()
        if self.log_file is None:
            import tempfile

            self.log_file = tempfile.mkstemp(prefix="llmrec-vllm-", suffix=".log")[1]
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(self.kv_cache_gib))))
        apply_cpu_bind(env, self.cpu_bind)
        logger.info("starting vLLM server: %s (log %s)", " ".join(argv), self.log_file)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise LlmrecError(
                    f"the vLLM server exited with code {self.process.returncode} while starting; "
                    f"its log ({self.log_file}) ends with:\n{_tail(self.log_file)}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        logger.info("vLLM server ready at %s", self.base_url)
                        return
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                pass
            time.sleep(2)
        self.stop()
        raise LlmrecError(
            f"the vLLM server did not answer within {self.startup_timeout_s:.0f} s; "
            f"log {self.log_file}:\n{_tail(self.log_file)}"
        )

    def stop(self) -> None:
        """Terminate the process (kill it after 30 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: str | None, lines: int = 30) -> str:
    if not path or not Path(path).exists():
        return "(no log)"
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
