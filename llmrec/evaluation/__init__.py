"""Offline evaluation: ranking metrics, retrieval evaluation, reports."""

from llmrec.evaluation.metrics import ndcg_at_k, recall_at_k, reciprocal_rank, summarize_ranks

__all__ = ["ndcg_at_k", "recall_at_k", "reciprocal_rank", "summarize_ranks"]
