"""Prompt templates; a package so that they ship inside the wheel (as ``llmrec.prompts``)."""
