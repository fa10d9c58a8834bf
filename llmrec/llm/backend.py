"""The backend interface every LLM engine implements (transformers, vLLM)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmrec.errors import LlmrecError


@runtime_checkable
class ScoringBackend(Protocol):
    """An engine that reads prompts and returns next-token log-probabilities."""

    tokenizer: Any
    model_name: str

    def label_logprobs(self, prompts: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
        """``len(prompts) x len(token_ids)`` log-probabilities (log-softmax over the
        whole vocabulary) of each token as the next token after each prompt."""
        ...

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations (comparison mode only)."""
        ...


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[int]:
    """Token id of each label; fails unless every label is exactly one distinct token."""
    ids = []
    for label in labels:
        toks = tokenizer.encode(label, add_special_tokens=False)
        if len(toks) != 1:
            pieces = [tokenizer.decode([t]) for t in toks]
            raise LlmrecError(
                f"label {label!r} is {len(toks)} tokens {pieces} for tokenizer "
                f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r}; the verbalizer needs "
                "one token per label: choose other labels in the template header"
            )
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise LlmrecError(f"labels {list(labels)} map to repeated token ids {ids}")
    return ids
