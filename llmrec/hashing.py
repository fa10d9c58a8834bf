"""Stable content hashes: the keys of llmrec's caches (evaluation entries, embeddings, merged models).

A key hashes what produced an entry (JSON-able parameters, numpy arrays by dtype, shape and
bytes, files by their bytes), so a changed input never finds a stale entry. It lives apart
from :mod:`llmrec.evaluation.cache` because generators and model loaders key their own caches
with it, below the evaluation layer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.io import jsonable

FORMAT = 1
"""Part of every digest: bumped when what a cache entry holds changes meaning."""


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts; numpy arrays are hashed by dtype, shape and bytes."""
    h = hashlib.sha256(str(FORMAT).encode())
    for part in parts:
        _feed(h, part)
    return h.hexdigest()[:20]


def _feed(h: Any, part: Any) -> None:
    if isinstance(part, np.ndarray):
        arr = np.ascontiguousarray(part)
        h.update(f"nd:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes() if arr.dtype != object else json.dumps(arr.tolist()).encode())
    elif isinstance(part, (list, tuple)) and any(isinstance(p, np.ndarray) for p in part):
        h.update(f"seq:{len(part)}".encode())
        for p in part:
            _feed(h, p)
    else:
        h.update(json.dumps(part, sort_keys=True, default=jsonable).encode())
    h.update(b"|")


def file_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """Hash of the bytes of files (an adapter's weights and config, a template)."""
    h = hashlib.sha256()
    for path in sorted(map(Path, paths)):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]
