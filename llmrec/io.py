"""Atomic output: a reader never sees a half-written file or folder.

Files are written 0644 and folders 0755 (``mkstemp``/``mkdtemp`` alone make them owner-only).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_figure(path: str | os.PathLike[str], fig: Any, dpi: int = 110) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically (:func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` for a writer that opens files by name (a
    Parquet writer); when the block succeeds the file is synced and renamed to ``path``.

    A failed write removes the temporary file; a killed one leaves it as ``.NAME.*.tmp``
    (never as ``path``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=jsonable) + "\n")


@contextmanager
def atomic_dir(
    path: str | os.PathLike[str], marker: str | None = None, *, keep_existing: bool = False
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    A killed or failed write leaves no half folder at ``path`` (only the temporary one is
    removed). An existing ``path`` is replaced only when it is an empty folder or holds
    ``marker`` (a file every such write creates), so a mistyped path never deletes other
    files. ``keep_existing``: a ``path`` that appeared meanwhile (a concurrent run wrote the
    same thing) is kept and the new folder discarded.
    """
    target = Path(path)
    if (
        target.exists()
        and not keep_existing
        and not (target.is_dir() and (not any(target.iterdir()) or (marker and (target / marker).is_file())))
    ):
        raise FileExistsError(
            f"{target} exists and is not a previous save (no {marker or 'marker file'} in it): "
            "choose another path or remove it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp: its 0700 mode would outlive the rename; mkdir honours the umask.
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists() and keep_existing:
            shutil.rmtree(tmp)
        elif target.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first.
            old = tmp.with_suffix(".old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def jsonable(value: Any) -> Any:
    """``json.dumps`` default: numpy values and paths as plain JSON."""
    # numpy scalars and arrays show up in metrics; keep JSON plain.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
