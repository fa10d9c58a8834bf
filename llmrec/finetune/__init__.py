"""Instruction tuning of the reranker: examples from source-domain histories -> QLoRA adapter.

::

    examples = build_examples(split, None, retriever, renderer, num_candidates=20, windows=3)
    evaluator = RankingEvaluator(split, retriever, "listwise", users=64)
    adapter_dir = finetune(FinetuneConfig.from_yaml("finetune/source-arts.yaml"), examples, evaluator)

The history LM (``task: history``) trains on ``history_dataset(...)`` texts instead, evaluated
by ``LikelihoodEvaluator``.

The adapter folder is used by ``TransformersBackend(TransformersConfig(model=..., adapter=...))``.
Names are imported on first use, so reading a ``FinetuneConfig`` does not load the trainer.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "InTrainingBackend": "backend",
    "FinetuneConfig": "config",
    "RankingEvaluator": "evaluation",
    "LikelihoodEvaluator": "evaluation",
    "history_dataset": "histories",
    "COLUMNS": "examples",
    "build_examples": "examples",
    "sample_users": "examples",
    "finetune": "trainer",
    "last_checkpoint": "trainer",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'llmrec.finetune' has no attribute {name!r}")
    return getattr(import_module(f"llmrec.finetune.{_HOMES[name]}"), name)
