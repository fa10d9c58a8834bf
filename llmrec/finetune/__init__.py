"""Instruction tuning of the reranker: examples from source-domain histories -> QLoRA adapter.

::

    examples = build_examples(split, None, retriever, renderer, num_candidates=20, windows=3)
    evaluator = RankingEvaluator(split, retriever, "listwise", users=64)
    adapter_dir = finetune(FinetuneConfig.from_yaml("finetune/source-arts.yaml"), examples, evaluator)

The adapter folder is used by ``TransformersBackend(TransformersConfig(model=..., adapter=...))``.
"""

from llmrec.finetune.backend import InTrainingBackend
from llmrec.finetune.config import FinetuneConfig
from llmrec.finetune.evaluation import RankingEvaluator
from llmrec.finetune.examples import COLUMNS, build_examples, sample_users
from llmrec.finetune.trainer import finetune, last_checkpoint

__all__ = [
    "COLUMNS",
    "FinetuneConfig",
    "InTrainingBackend",
    "RankingEvaluator",
    "build_examples",
    "finetune",
    "last_checkpoint",
    "sample_users",
]
