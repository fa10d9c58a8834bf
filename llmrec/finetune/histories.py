"""Training texts for the history LM (``task: history``): users' histories as lists of titles.

The listwise reranker learns from a few thousand candidate lists and reads mostly their order.
What the retriever knows and the LLM does not is which items follow which; a causal LM trained
on the histories themselves learns that from every position of every user. Each text is the
likelihood scorer's prompt (:mod:`llmrec.llm.likelihood`): a header line, then up to
``window`` consecutive titles of one user's *training* items, one per line, oldest first.
Every title is a prediction target (``completion_mask`` 1); the header is not. Validation and
test items never appear, so the scorer reads the same form at evaluation without a leak.

Titles are tokenized line by line, as the scorer tokenizes its candidates, so training and
scoring see the same token sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import Dataset

from llmrec.llm.likelihood import history_line
from llmrec.llm.prompting import start_ids


def history_dataset(
    sequences: Sequence[np.ndarray],
    titles: Sequence[str],
    tokenizer: Any,
    *,
    header: str,
    window: int = 32,
    max_title_chars: int = 120,
    users: np.ndarray | None = None,
) -> Dataset:
    """Tokenized history texts: ``input_ids``, ``completion_mask`` (1 on title tokens), ``user``.

    ``sequences``: per user, item indices oldest first (training items only). ``titles``: per
    item index. Each user's sequence is cut into consecutive, non-overlapping chunks of at most
    ``window`` titles; ``users`` keeps only those user indices (default all).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    head = start_ids(tokenizer) + tokenizer.encode(header, add_special_tokens=False)
    cache: dict[int, list[int]] = {}

    def line(item: int) -> list[int]:
        if item not in cache:
            cache[item] = tokenizer.encode(
                history_line(titles[item], tokenizer, max_title_chars), add_special_tokens=False
            )
        return cache[item]

    rows: dict[str, list] = {"input_ids": [], "completion_mask": [], "user": []}
    chosen = range(len(sequences)) if users is None else [int(u) for u in users]
    for user in chosen:
        seq = sequences[user]
        for lo in range(0, len(seq), window):
            ids, mask = list(head), [0] * len(head)
            for item in seq[lo : lo + window]:
                tokens = line(int(item))
                ids.extend(tokens)
                mask.extend([1] * len(tokens))
            if len(ids) > len(head):
                rows["input_ids"].append(ids)
                rows["completion_mask"].append(mask)
                rows["user"].append(user)
    return Dataset.from_dict(rows)
