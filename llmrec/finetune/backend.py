"""A scoring backend over a model that is being trained (for in-training evaluation).

It implements :class:`~llmrec.llm.backend.ScoringBackend` exactly as
:class:`~llmrec.llm.transformers_backend.TransformersBackend` does (left padding, one
forward pass, log-softmax of the last position), so the validation metric logged during
training is computed by the same :class:`~llmrec.llm.reranker.LLMReranker` path that
serves and evaluates the finished adapter. The model is put in eval mode for the call
and its previous mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmrec.llm.transformers_backend import CausalLMScorer


class InTrainingBackend(CausalLMScorer):
    """Wraps ``model`` (e.g. a PeftModel inside a Trainer) and its tokenizer."""

    def __init__(
        self, model: Any, tokenizer: Any, model_name: str = "in-training", batch_size: int = 8
    ) -> None:
        super().__init__(model, tokenizer, model_name, batch_size)

    @contextmanager
    def _scoring(self) -> Iterator[None]:
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
