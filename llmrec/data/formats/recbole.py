"""RecBole atomic files: ``NAME.inter`` + ``NAME.item``, tab-separated with ``name:type`` headers.

RecBole benchmark folders (``NAME.train.inter`` / ``NAME.valid.inter`` /
``NAME.test.inter``, the ``benchmark_filename`` setting) load too, when they hold a
leave-one-out split: see :func:`load_recbole`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.formats.canonical import _finish, _interactions, _items
from llmrec.data.formats.reading import (
    _check_columns,
    _check_rows,
    _folder,
    _guess_separator,
    _read_text_table,
    _separator_hint,
)
from llmrec.data.formats.values import _ids, _join_text, _order_key, _ratings
from llmrec.data.schema import RecDataset
from llmrec.errors import DataError

RECBOLE_TITLE_FIELDS = ("title", "movie_title", "item_title", "name")
"""Item-file fields RecBole datasets use for the title (the first present wins)."""

SPLIT_PARTS = ("train", "valid", "test")
"""The parts of a RecBole benchmark split, in the order their rows are concatenated."""
_USER_FIELDS = ("user_id", "session_id")


def _read_recbole(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A RecBole atomic file: tab-separated, header ``name:type``; returns (frame, name -> type)."""
    frame = _read_text_table(path, "\t", quoting=csv.QUOTE_NONE)
    types: dict[str, str] = {}
    for column in frame.columns:
        col_name, sep, kind = str(column).rpartition(":")
        if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
            guess = _guess_separator(str(column), "\t")
            raise DataError(
                "RecBole header fields must be 'name:type' (type token, token_seq, float or float_seq)",
                file=str(path),
                column=str(column),
                value=str(column),
                hint=_separator_hint(str(column), "\t") if guess else "e.g. 'user_id:token'",
            )
        types[col_name] = kind
    frame.columns = list(types)
    return frame, types


def _recbole_items(item_file: Path, domain: str) -> pd.DataFrame:
    """The canonical items of a ``NAME.item`` file: a title field, other token fields as text."""
    items_raw, item_types = _read_recbole(item_file)
    title = next((f for f in RECBOLE_TITLE_FIELDS if f in items_raw.columns), None)
    _check_columns(items_raw, ["item_id", title or "title"], item_file, "\t")
    _check_rows(items_raw, item_file)
    text_cols = [
        c for c, kind in item_types.items() if c not in ("item_id", title) and kind in ("token", "token_seq")
    ]
    return _items(
        _ids(items_raw["item_id"], item_file, "item_id"),
        items_raw[title],
        _join_text([items_raw[c] for c in text_cols], len(items_raw)),
        domain,
    )


def load_recbole(path: str | Path, *, name: str | None = None, domain: str | None = None) -> RecDataset:
    """RecBole atomic files in a folder: ``NAME.inter`` + ``NAME.item`` (NAME = folder name by default).

    ``.inter`` needs ``user_id`` and ``item_id``; ``rating`` and ``timestamp`` are
    optional (without a timestamp the row order is the step). ``.item`` needs
    ``item_id`` and a title field (one of :data:`RECBOLE_TITLE_FIELDS`); its other
    token / token_seq fields (genre, categories, brand, ...) become the item ``text``.

    A benchmark folder (``NAME.train.inter``, ``NAME.valid.inter``, ``NAME.test.inter``
    beside ``NAME.item``, no ``NAME.inter``) is read as one table: the train, valid and
    test rows in this order, the row order being the step, so that leave-one-out holds
    out the benchmark's own valid and test items. That needs one valid and one test row
    per user; anything else (a ratio split) raises. Rows with an ``item_id_list``
    (token_seq) history, as sequential benchmarks write them, give the user's first
    history plus each row's ``item_id``; a later row whose history does not end with the
    user's previous item raises. Run it with ``k_core: 0`` so cleaning keeps every row.
    """
    root = _folder(path)
    name = name or root.name
    ifile = root / f"{name}.inter"
    if not ifile.is_file():
        found = sorted(root.glob("*.inter"))
        plain = [p for p in found if _split_part(p) is None]
        if not plain and found:
            return _load_benchmark(root, found, name, domain)
        ifile = plain[0] if len(plain) == 1 else ifile
    inter_raw, inter_types = _read_recbole(ifile)
    _check_columns(inter_raw, ["user_id", "item_id"], ifile, "\t")
    _check_rows(inter_raw, ifile)
    domain = domain or name
    items = _recbole_items(ifile.with_suffix(".item"), domain)
    has_time = "timestamp" in inter_types
    inter = _interactions(
        _ids(inter_raw["user_id"], ifile, "user_id"),
        _ids(inter_raw["item_id"], ifile, "item_id"),
        _order_key(inter_raw["timestamp"], ifile, "timestamp") if has_time else np.arange(len(inter_raw)),
        _ratings(inter_raw["rating"], ifile, "rating") if "rating" in inter_types else None,
        domain,
    )
    log = [] if has_time else [f"{ifile.name} has no timestamp field: the row order is the step"]
    return _finish(
        name,
        inter,
        items,
        order_by="timestamp" if has_time else "step",
        source=str(root),
        inter_file=ifile,
        item_column="item_id",
        log=log,
    )


def _split_part(path: Path) -> str | None:
    """``"train"`` for ``NAME.train.inter`` (likewise valid, test), else None."""
    part = path.name.removesuffix(".inter").rpartition(".")[2]
    return part if path.name.count(".") >= 2 and part in SPLIT_PARTS else None


def _benchmark_files(root: Path, found: list[Path]) -> list[Path]:
    """The three split files of one benchmark NAME; raises naming what is found and what is expected."""
    names = sorted({p.name.removesuffix(f".{_split_part(p)}.inter") for p in found})
    expected = [root / f"{names[0]}.{part}.inter" for part in SPLIT_PARTS]
    if len(names) > 1 or not all(f.is_file() for f in expected):
        raise DataError(
            f"RecBole benchmark files found: {[p.name for p in found]}; llmrec expects NAME.inter, or "
            "all three of NAME.train.inter, NAME.valid.inter, NAME.test.inter (one NAME), beside NAME.item",
            file=str(root),
            hint="add the missing split file, or keep one NAME per folder",
        )
    return expected


def _user_field(frame: pd.DataFrame, path: Path) -> str:
    user = next((u for u in _USER_FIELDS if u in frame.columns), _USER_FIELDS[0])
    _check_columns(frame, [user, "item_id"], path, "\t")
    _check_rows(frame, path)
    return user


def _benchmark_rows(files: list[Path]) -> tuple[list[str], list[str], list[str]]:
    """(user, item, part) per interaction: the split files' rows in train, valid, test order.

    A row with an ``item_id_list`` history adds the history first when it is the
    user's first row; a later row's history must end with the user's previous item.
    """
    users: list[str] = []
    items: list[str] = []
    parts: list[str] = []
    last: dict[str, str] = {}
    for path, part in zip(files, SPLIT_PARTS, strict=True):
        frame, types = _read_recbole(path)
        user = _user_field(frame, path)
        lists = frame["item_id_list"] if types.get("item_id_list") == "token_seq" else [None] * len(frame)
        row_users, row_items = _ids(frame[user], path, user), _ids(frame["item_id"], path, "item_id")
        for u, history, item in zip(row_users, lists, row_items, strict=True):
            tokens = history.split() if isinstance(history, str) else []
            if u not in last:
                users += [u] * len(tokens)
                items += tokens
                parts += [part] * len(tokens)
            elif tokens and tokens[-1] != last[u]:
                raise DataError(
                    f"the history of user {u!r} does not end with the user's previous item {last[u]!r}",
                    file=str(path),
                    column="item_id_list",
                    value=" ".join(tokens[-5:]),
                    hint="the split files must come from one RecBole run (same benchmark); "
                    "re-export them, or concatenate the interactions into NAME.inter",
                )
            users.append(u)
            items.append(item)
            parts.append(part)
            last[u] = item
    return users, items, parts


def _check_leave_one_out(users: list[str], parts: list[str], files: list[Path]) -> None:
    """Each user of the split has exactly one valid and one test row, else the split is not leave-one-out."""
    frame = pd.DataFrame({"user": users, "part": parts})
    counts = (
        frame.groupby(["user", "part"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(SPLIT_PARTS), fill_value=0)
    )
    for path, part in zip(files[1:], SPLIT_PARTS[1:], strict=True):
        bad = counts.index[counts[part] != 1]
        if len(bad):
            user = bad[0]
            raise DataError(
                f"not a leave-one-out split: user {user!r} has {int(counts.at[user, part])} rows in "
                f"{path.name} ({len(bad)} users have not exactly one)",
                file=str(path),
                column="user_id",
                value=user,
                hint="llmrec holds out each user's last two interactions itself; to load these "
                f"interactions anyway (other held-out items than the benchmark's), concatenate the "
                f"three files into {path.name.removesuffix(f'.{part}.inter')}.inter with one header line",
            )


def _load_benchmark(root: Path, found: list[Path], name: str, domain: str | None) -> RecDataset:
    """A RecBole benchmark folder: see :func:`load_recbole`."""
    files = _benchmark_files(root, found)
    users, item_ids, parts = _benchmark_rows(files)
    _check_leave_one_out(users, parts, files)
    bench = files[0].name.removesuffix(".train.inter")
    domain = domain or bench
    inter = _interactions(
        pd.Series(users, dtype=object),
        pd.Series(item_ids, dtype=object),
        np.arange(len(users)),
        None,
        domain,
    )
    items = _recbole_items(root / f"{bench}.item", domain)
    return _finish(
        name,
        inter,
        items,
        order_by="step",
        source=str(root),
        inter_file=files[0],
        item_column="item_id",
        log=[f"{bench}: benchmark split files read in order train, valid, test; the row order is the step"],
    )
