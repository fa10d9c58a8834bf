"""transformers backend: bf16 on CPU or GPU, optional bitsandbytes 4/8-bit and a PEFT adapter."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from llmrec.errors import ConfigError
from llmrec.llm.models import resolve_model

logger = logging.getLogger(__name__)


@dataclass
class TransformersConfig:
    """How to load the model."""

    model: str = "smollm2-135m-instruct"
    """Hub id, local folder, or an offline model name."""
    adapter: str | None = None
    """Optional PEFT adapter folder applied on top of the base model."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    device: str = "auto"
    """'cpu', 'cuda', 'cuda:1', or 'auto' (GPU when available)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """'auto': bfloat16 on GPU and on CPUs with native bf16 (AVX512-BF16/AMX), else float32
    (emulated bf16 is several times slower than float32 on an AVX2-only CPU)."""
    batch_size: int = 8
    threads: int | None = None
    """CPU threads for torch (None = torch's default)."""

    def __post_init__(self) -> None:
        if self.quantization not in ("none", "4bit", "8bit"):
            raise ConfigError("must be none, 4bit or 8bit", parameter="quantization", value=self.quantization)
        if self.batch_size < 1:
            raise ConfigError("must be >= 1", parameter="batch_size", value=self.batch_size)


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


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str, device: str) -> str:
    """The concrete torch dtype name for ``dtype`` ('auto' picks per device)."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


class TransformersBackend:
    """Batched next-token scoring with a causal LM from transformers."""

    def __init__(self, config: TransformersConfig | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config = config or TransformersConfig()
        if config.threads:
            torch.set_num_threads(config.threads)
        path = resolve_model(config.model)
        self.model_name = config.model
        self.device = self._pick_device(config.device)
        dtype = getattr(torch, resolve_dtype(config.dtype, self.device))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # the last position is the next token for every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs: dict[str, Any] = {"dtype": dtype}
        quant = bnb_config(config.quantization, dtype)
        if quant is not None:
            kwargs["quantization_config"] = quant
            kwargs["device_map"] = "cpu" if self.device == "cpu" else {"": self.device}
        self.model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if quant is None:
            self.model.to(self.device)
        if config.adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, config.adapter)
        self.model.eval()

    @staticmethod
    def _pick_device(device: str) -> str:
        import torch

        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("CUDA is not available on this machine", parameter="device", value=device)
        return device

    def _batches(self, prompts: Sequence[str]):
        # Longest first: batches of similar length waste less padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for lo in range(0, len(order), self.config.batch_size):
            idx = order[lo : lo + self.config.batch_size]
            enc = self.tokenizer(
                [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            )
            yield idx, enc.to(self.device)

    def label_logprobs(self, prompts: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
        """Log-softmax of the next-token logits at each prompt's end, for ``token_ids``."""
        import torch

        out = np.zeros((len(prompts), len(token_ids)), dtype=np.float32)
        ids = torch.tensor(list(token_ids), device=self.device)
        with torch.inference_mode():
            for idx, enc in self._batches(prompts):
                logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :].float()
                logp = torch.log_softmax(logits, dim=-1)[:, ids]
                out[idx] = logp.cpu().numpy()
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy generation (the slow comparison path)."""
        import torch

        out: list[str] = [""] * len(prompts)
        with torch.inference_mode():
            for idx, enc in self._batches(prompts):
                gen = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                new = gen[:, enc["input_ids"].shape[1] :]
                for row, i in enumerate(idx):
                    out[i] = self.tokenizer.decode(new[row], skip_special_tokens=True)
        return out
