"""llmrec: recommend with language models."""

__version__ = "0.2.0"
