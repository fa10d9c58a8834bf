"""transformers backend: bf16 on CPU or GPU, optional bitsandbytes 4/8-bit and a PEFT adapter."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from llmrec.errors import ConfigError
from llmrec.llm.models import check_adapter_folder, load_causal_lm, pick_device, resolve_dtype, resolve_model

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
    """CPU threads for torch while this backend computes (None = the process's setting)."""

    def __post_init__(self) -> None:
        if self.quantization not in ("none", "4bit", "8bit"):
            raise ConfigError("must be none, 4bit or 8bit", parameter="quantization", value=self.quantization)
        if self.batch_size < 1:
            raise ConfigError("must be >= 1", parameter="batch_size", value=self.batch_size)
        if self.adapter:
            check_adapter_folder(self.adapter)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` inside the block and restored after, so one
    backend's setting does not leak into the rest of the process (None: unchanged). The count
    is process-wide while the block runs: two backends computing at once share it."""
    import torch

    if not n or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CausalLMScorer:
    """:class:`~llmrec.llm.backend.ScoringBackend` over an already-loaded causal LM.

    Left-pads each batch so the last position is every row's next token, runs one
    forward pass keeping only the last position's logits, and returns the
    log-softmax over the vocabulary for the requested token ids.
    """

    def __init__(
        self, model: Any, tokenizer: Any, model_name: str, batch_size: int = 8, threads: int | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.batch_size = batch_size
        self.threads = threads
        """torch's CPU threads during this scorer's calls (None: leave the process's setting)."""

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @contextmanager
    def _scoring(self) -> Iterator[None]:
        import torch

        with torch.inference_mode(), torch_threads(self.threads):
            yield

    def _batches(self, prompts: Sequence[str]) -> Iterator[tuple[list[int], dict[str, Any]]]:
        import torch

        # Longest first: batches of similar length waste less padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            ids = [self.tokenizer.encode(prompts[i], add_special_tokens=False) for i in idx]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for r, x in enumerate(ids):  # left padding: the last position is the next token
                input_ids[r, width - len(x) :] = torch.tensor(x)
                mask[r, width - len(x) :] = 1
            yield idx, {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    def label_logprobs(self, prompts: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
        """Log-softmax of the next-token logits at each prompt's end, for ``token_ids``."""
        import torch

        out = np.zeros((len(prompts), len(token_ids)), dtype=np.float32)
        ids = torch.tensor(list(token_ids))
        with self._scoring():
            for idx, enc in self._batches(prompts):
                logits = self.model(**enc, logits_to_keep=1, use_cache=False).logits[:, -1, :].float()
                out[idx] = torch.log_softmax(logits, dim=-1)[:, ids.to(logits.device)].cpu().numpy()
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy generation (the slow comparison path)."""
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        out: list[str] = [""] * len(prompts)
        with self._scoring():
            for idx, enc in self._batches(prompts):
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
                )
                new = gen[:, enc["input_ids"].shape[1] :]
                for row, i in enumerate(idx):
                    out[i] = self.tokenizer.decode(new[row], skip_special_tokens=True)
        return out


class TransformersBackend(CausalLMScorer):
    """Loads a causal LM from transformers (bf16/fp32, optional bitsandbytes and PEFT adapter)."""

    def __init__(self, config: TransformersConfig | None = None) -> None:
        import torch
        from transformers import AutoTokenizer

        self.config = config = config or TransformersConfig()
        path = resolve_model(config.model)
        device = pick_device(config.device)
        dtype = getattr(torch, resolve_dtype(config.dtype, device))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = load_causal_lm(path, config.quantization, device, dtype)
        if config.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, config.adapter)
        model.eval()
        super().__init__(model, tokenizer, config.model, config.batch_size, config.threads)
