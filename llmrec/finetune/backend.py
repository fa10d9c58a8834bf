"""A scoring backend over a model that is being trained (for in-training evaluation).

It implements :class:`~llmrec.llm.backend.ScoringBackend` exactly as
:class:`~llmrec.llm.transformers_backend.TransformersBackend` does (left padding, one
forward pass, log-softmax of the last position), so the validation metric logged during
training is computed by the same :class:`~llmrec.llm.reranker.LLMReranker` path that
serves and evaluates the finished adapter. The model is put in eval mode for the call
and its previous mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np


class InTrainingBackend:
    """Wraps ``model`` (e.g. a PeftModel inside a Trainer) and its tokenizer."""

    def __init__(
        self, model: Any, tokenizer: Any, model_name: str = "in-training", batch_size: int = 8
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.batch_size = batch_size

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            # no_grad, not inference_mode: tensors cached during the call must stay usable
            # by autograd when training resumes.
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _batches(self, prompts: Sequence[str]) -> Iterator[tuple[list[int], dict[str, Any]]]:
        import torch

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
        """``len(prompts) x len(token_ids)`` next-token log-probabilities."""
        import torch

        out = np.zeros((len(prompts), len(token_ids)), dtype=np.float32)
        ids = torch.tensor(list(token_ids))
        with self._eval_mode():
            for idx, enc in self._batches(prompts):
                logits = self.model(**enc, logits_to_keep=1, use_cache=False).logits[:, -1, :].float()
                out[idx] = torch.log_softmax(logits, dim=-1)[:, ids.to(logits.device)].cpu().numpy()
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy continuations (comparison mode only)."""
        out: list[str] = [""] * len(prompts)
        with self._eval_mode():
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
