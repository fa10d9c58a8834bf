"""Item text is untrusted: make it inert inside a prompt.

A title may carry newlines, role markers (``### Response:``), chat special
tokens (``<|im_end|>``, ``</s>``), control characters or megabytes of text.
After :func:`sanitize_item_text` it is one bounded line that cannot end a
message, open a role, or be parsed as a special token.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Shapes of control tokens across chat formats (ChatML, Llama, Mistral, Gemma, ...).
_TOKEN_LIKE = re.compile(
    r"<\|[^|<>]{0,40}\|>"  # <|im_end|>, <|eot_id|>, <|start_header_id|>
    r"|</?s>"  # <s>, </s>
    r"|\[/?(?:INST|SYS)\]"  # [INST], [/INST]
    r"|<</?SYS>>"
    r"|<(?:start|end)_of_turn>"
    r"|<\|?(?:endoftext|pad|unk|eos|bos)\|?>",
    re.IGNORECASE,
)
_ROLE_HEADER = re.compile(r"#{2,}")  # "### Response:" style section headers
_SPACES = re.compile(r"\s+")


def sanitize_item_text(text: str, special_tokens: Iterable[str] = (), max_chars: int = 400) -> str:
    """One inert line: no control chars, newlines, special tokens or role headers; at most ``max_chars``."""
    text = str(text)[: max_chars * 4]  # bound the work before any regex runs
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" and ch != " " else ch for ch in text)
    specials = sorted({t for t in special_tokens if t and not t.isalnum()}, key=len, reverse=True)
    previous = None
    while previous != text:  # removal can join fragments into a new marker: repeat until stable
        previous = text
        for tok in specials:
            text = text.replace(tok, " ")
        text = _TOKEN_LIKE.sub(" ", text)
        text = _ROLE_HEADER.sub("#", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:max_chars].rstrip()
