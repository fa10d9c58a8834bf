"""Reading source files as text tables, and the checks every format shares.

Every problem raises one :class:`~llmrec.errors.DataError` naming the file, the
column and an example of the bad value; a header that looks split by another
separator than the format's gets a hint saying so.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from llmrec.errors import DataError

_SEPARATORS = (",", ";", "\t", "|", "::")
_SEP_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe", "::": "'::'"}
_GZIP_MAGIC = b"\x1f\x8b"

UNREADABLE = (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError)
"""What decompressing or decoding a file raises; :func:`_unreadable` turns each into a DataError."""


def _require_file(path: Path) -> Path:
    if not path.is_file():
        found = sorted(p.name for p in path.parent.iterdir())[:12] if path.parent.is_dir() else []
        hint = f"files in {path.parent}: {found}" if found else f"folder {path.parent} does not exist"
        raise DataError("file not found", file=str(path), hint=hint)
    return path


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _unreadable(path: Path, err: Exception, encoding: str = "utf-8") -> DataError:
    """The :class:`DataError` for a file that cannot be decompressed or decoded (see :data:`UNREADABLE`)."""
    gz = _is_gzip(path)
    if isinstance(err, UnicodeDecodeError) and not gz:
        return DataError(
            f"file is not valid {encoding} text ({err.reason})",
            file=str(path),
            value=err.object[max(0, err.start - 20) : err.end + 20],
            hint=f"save the file as {encoding}",
        )
    if gz and not path.name.endswith(".gz"):
        return DataError(
            "file is gzip-compressed but its name does not end in .gz",
            file=str(path),
            hint=f"rename it to {path.name}.gz",
        )
    if not gz:
        return DataError(
            "not gzip-compressed, although its name ends in .gz",
            file=str(path),
            hint=f"rename it to {path.name.removesuffix('.gz')}",
        )
    return DataError(
        f"truncated or corrupt gzip file ({err})",
        file=str(path),
        hint="re-download it (`gzip -t FILE` checks a copy)",
    )


def _guess_separator(header: str, expected: str) -> str | None:
    """A separator other than ``expected`` that the header line contains, if any."""
    for sep in _SEPARATORS:
        if sep != expected and sep in header:
            return sep
    return None


def _separator_hint(header: str, expected: str) -> str:
    guess = _guess_separator(header, expected)
    looks = f"the first line looks {_SEP_NAMES[guess]}-separated; " if guess else ""
    return f"check the separator: {looks}this format expects {_SEP_NAMES.get(expected, repr(expected))}"


def _read_text_table(
    path: Path, sep: str, *, header: bool = True, encoding: str = "utf-8", quoting: int = csv.QUOTE_MINIMAL
) -> pd.DataFrame:
    """Every cell as ``str``; only empty cells are missing (NaN)."""
    _require_file(path)
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding=encoding,
            quoting=quoting,
            compression="infer",
        )
    except pd.errors.EmptyDataError as err:
        raise DataError("file is empty", file=str(path), hint="the file has no header and no rows") from err
    except UNREADABLE as err:
        raise _unreadable(path, err, encoding) from err
    except pd.errors.ParserError as err:
        raise DataError(
            f"cannot parse the file: {err}", file=str(path), hint=_separator_hint("", sep)
        ) from err
    if not header:
        frame.columns = list(range(frame.shape[1]))
    return frame


def _check_columns(frame: pd.DataFrame, required: Sequence[str], path: Path, sep: str = ",") -> None:
    """Raise for the first required column the header lacks, with a separator hint when it fits."""
    missing = [c for c in required if c not in frame.columns]
    if not missing:
        return
    found = [str(c) for c in frame.columns]
    if len(found) == 1 and _guess_separator(found[0], sep):
        hint = _separator_hint(found[0], sep)
    else:
        hint = f"expected columns {list(required)} (case-sensitive); check the header row"
    raise DataError(
        f"missing column {missing[0]!r}; columns found: {found}",
        file=str(path),
        column=missing[0],
        value=found[0] if found else None,
        hint=hint,
    )


def _check_field_count(frame: pd.DataFrame, count: int, path: Path, sep: str, names: Sequence[str]) -> None:
    """For header-less files: at least ``count`` fields per line."""
    if frame.shape[1] >= count:
        return
    first = "" if frame.empty else str(frame.iloc[0, 0])
    raise DataError(
        f"expected {count} fields per line ({', '.join(names)}), found {frame.shape[1]}",
        file=str(path),
        column=names[frame.shape[1]],
        value=first,
        hint=_separator_hint(first, sep),
    )


def _check_rows(frame: pd.DataFrame, path: Path) -> None:
    if frame.empty:
        raise DataError("table has no rows", file=str(path), hint="the file holds a header only")


def _folder(path: str | Path) -> Path:
    root = Path(path)
    if root.is_file():
        raise DataError(
            "expected a dataset folder, got a file", file=str(root), hint=f"pass its folder {root.parent}"
        )
    if not root.is_dir():
        raise DataError("dataset folder not found", file=str(root))
    return root
