"""Tokenizer shared by the text generators (and anything that must match them).

Deliberately simple and language-agnostic: casefold, Unicode ``\\w+`` tokens, a small
English stopword list. No stemming, so tokens stay readable and parity tests against
reference BM25 implementations only depend on the scoring, not on a stemmer version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Small on purpose: only words that carry no signal in titles/categories. Items whose
# text is *only* stopwords still get an (empty) document and score 0.
STOPWORDS: frozenset[str] = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "nor",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "too",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
    ]
)

_TOKEN = re.compile(r"\w+")


def tokenize(text: str, stopwords: frozenset[str] = STOPWORDS) -> list[str]:
    """Casefolded Unicode word tokens of ``text`` without ``stopwords``, in order (repeats kept)."""
    return [tok for tok in _TOKEN.findall(text.casefold()) if tok not in stopwords]


def tokenize_many(texts: Iterable[str], stopwords: frozenset[str] = STOPWORDS) -> list[list[str]]:
    """:func:`tokenize` applied to each text."""
    return [tokenize(t, stopwords) for t in texts]
