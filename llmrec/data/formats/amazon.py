"""Amazon Reviews 2023: JSON Lines reviews files and their ``meta_`` files, one domain per pair."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from llmrec.data.formats.canonical import _concat, _finish, _interactions, _items
from llmrec.data.formats.reading import UNREADABLE, _check_rows, _folder, _require_file, _unreadable
from llmrec.data.formats.values import _ids, _join_text, _order_key, _ratings, _text
from llmrec.data.schema import RecDataset
from llmrec.errors import DataError

AMAZON_TEXT_FIELDS = ("categories", "store", "features", "description")
"""Meta fields of Amazon Reviews 2023 joined into the item ``text`` by default."""


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 - closed by the caller's with-block


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line; a bad line raises with its number."""
    _require_file(path)
    with _open_text(path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"invalid JSON at line {number}: {err.msg}",
                        file=str(path),
                        value=line[:80],
                        hint="each line must be one JSON object (JSON Lines)",
                    ) from err
                if not isinstance(record, dict):
                    raise DataError(f"line {number} is not a JSON object", file=str(path), value=line[:80])
                yield number, record
        except UNREADABLE as err:
            raise _unreadable(path, err) from err
        except OSError as err:
            raise DataError(f"cannot read the file: {err}", file=str(path)) from err


def _read_jsonl(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """The given fields of a ``.jsonl`` / ``.jsonl.gz`` file; a missing required field raises."""
    fields = [*required, *optional]
    columns: dict[str, list[Any]] = {f: [] for f in fields}
    for number, record in _jsonl_records(path):
        for name in required:
            if record.get(name) is None:
                raise DataError(
                    f"line {number} lacks the field {name!r}; fields found: {sorted(record)[:12]}",
                    file=str(path),
                    column=name,
                    hint="check that this is the right file (reviews vs meta)",
                )
        for name in fields:
            columns[name].append(record.get(name))
    frame = pd.DataFrame(columns, columns=fields)
    _check_rows(frame, path)
    return frame


def amazon_domain(path: str | Path) -> str:
    """Domain name of an Amazon 2023 file: ``meta_Office_Products.jsonl.gz`` -> ``Office_Products``."""
    stem = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        stem = stem.removesuffix(suffix)
    return stem.removeprefix("meta_")


def load_amazon2023(
    reviews: str | Path,
    meta: str | Path,
    domain: str | None = None,
    *,
    name: str | None = None,
    text_fields: Sequence[str] = AMAZON_TEXT_FIELDS,
) -> RecDataset:
    """Amazon Reviews 2023 JSON Lines (``.jsonl`` or ``.jsonl.gz``): a reviews file and its meta file.

    Reviews need ``user_id``, ``parent_asin`` and ``timestamp`` (milliseconds,
    kept as they are: the order key is Unix time in ms); ``rating`` is optional.
    Items are the meta records (``parent_asin``, ``title``); ``text_fields``
    (lists or strings) are joined into the item ``text``. The domain defaults to
    the reviews file name (``Office_Products.jsonl`` -> ``Office_Products``).
    """
    rfile, mfile = Path(reviews), Path(meta)
    domain = domain or amazon_domain(rfile)
    rows = _read_jsonl(rfile, ["user_id", "parent_asin", "timestamp"], ["rating"])
    inter = _interactions(
        _ids(rows["user_id"], rfile, "user_id", 1),
        _ids(rows["parent_asin"], rfile, "parent_asin", 1),
        _order_key(rows["timestamp"], rfile, "timestamp", 1),
        _ratings(rows["rating"], rfile, "rating", 1),
        domain,
    )
    meta_rows = _read_jsonl(mfile, ["parent_asin"], ["title", *text_fields])
    items = _items(
        _ids(meta_rows["parent_asin"], mfile, "parent_asin", 1),
        [_text(t) for t in meta_rows["title"]],
        _join_text([meta_rows[f] for f in text_fields], len(meta_rows)),
        domain,
    )
    return _finish(
        name or domain,
        inter,
        items,
        order_by="timestamp",
        source=f"{rfile} + {mfile}",
        inter_file=rfile,
        item_column="parent_asin",
        log=[f"{domain}: timestamps are Unix milliseconds (as in Amazon Reviews 2023)"],
    )


def _amazon_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(reviews, meta) file pairs of an Amazon 2023 folder, by domain name."""
    files = [p for p in sorted(root.iterdir()) if p.name.endswith((".jsonl", ".jsonl.gz"))]
    metas = {amazon_domain(p): p for p in files if p.name.startswith("meta_")}
    return [
        (p, metas[amazon_domain(p)])
        for p in files
        if not p.name.startswith("meta_") and amazon_domain(p) in metas
    ]


def load_amazon2023_folder(path: str | Path, *, name: str | None = None) -> RecDataset:
    """Every ``X.jsonl[.gz]`` + ``meta_X.jsonl[.gz]`` pair of a folder, one domain per pair."""
    root = _folder(path)
    pairs = _amazon_pairs(root)
    if not pairs:
        raise DataError(
            "no Amazon 2023 file pair found",
            file=str(root),
            hint="expected e.g. Office_Products.jsonl.gz beside meta_Office_Products.jsonl.gz",
        )
    if len(pairs) == 1:
        return load_amazon2023(*pairs[0], name=name or root.name)
    parts = [load_amazon2023(reviews, meta) for reviews, meta in pairs]
    return _concat(name or root.name, parts, source=str(root), inter_file=pairs[0][0])
