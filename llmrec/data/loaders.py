"""Loaders: source formats -> canonical :class:`RecDataset` tables.

Supported sources (each loader names the files it reads):

- MovieLens CSV (ml-latest-small, ml-25m, ...): ``ratings.csv`` + ``movies.csv``
  (:func:`load_movielens`);
- MovieLens 100K: ``u.data`` + ``u.item`` (+ ``u.genre``) (:func:`load_movielens_100k`);
- MovieLens 1M / 10M: ``ratings.dat`` + ``movies.dat`` (:func:`load_movielens_1m`);
- Amazon Reviews 2023 JSONL: a reviews file + its ``meta_`` file (:func:`load_amazon2023`);
- RecBole atomic files: ``NAME.inter`` + ``NAME.item``, or a leave-one-out benchmark
  split ``NAME.train.inter`` / ``NAME.valid.inter`` / ``NAME.test.inter`` + ``NAME.item``
  (:func:`load_recbole`);
- any CSV/TSV/Parquet pair with a :class:`ColumnMapping` (:func:`load_tables`);
- a folder written by ``RecDataset.save`` / ``llmrec data --save`` (:meth:`RecDataset.load`).

:func:`load_dataset` detects the format of a folder. Every problem with the
input raises one :class:`~llmrec.errors.DataError` naming the file, the column
and an example of the bad value. Every value is read as text first, so ids keep
their leading zeros and a bad number is reported as it was written. Titles are
stripped of surrounding blanks; an item without a title gets ``""`` (cleaning
drops it).

Each format lives in its own module under :mod:`llmrec.data.formats`; this module
holds the entry point (:func:`load_dataset`, :func:`detect_format`) and re-exports
every loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Every public name of the former single-file module stays importable from here;
# "X as X" marks a re-export this module does not use itself.
from llmrec.data.formats.amazon import AMAZON_TEXT_FIELDS as AMAZON_TEXT_FIELDS
from llmrec.data.formats.amazon import _amazon_pairs, load_amazon2023_folder
from llmrec.data.formats.amazon import amazon_domain as amazon_domain
from llmrec.data.formats.amazon import load_amazon2023 as load_amazon2023
from llmrec.data.formats.movielens import ML100K_GENRES as ML100K_GENRES
from llmrec.data.formats.movielens import load_movielens, load_movielens_1m, load_movielens_100k
from llmrec.data.formats.reading import _folder
from llmrec.data.formats.recbole import RECBOLE_TITLE_FIELDS as RECBOLE_TITLE_FIELDS
from llmrec.data.formats.recbole import load_recbole
from llmrec.data.formats.tables import TABLE_SUFFIXES as TABLE_SUFFIXES
from llmrec.data.formats.tables import ColumnMapping as ColumnMapping
from llmrec.data.formats.tables import _find_table, load_tables_folder
from llmrec.data.formats.tables import infer_mapping as infer_mapping
from llmrec.data.formats.tables import load_tables as load_tables
from llmrec.data.schema import DATASET_META, RecDataset
from llmrec.errors import DataError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
EMBEDDED = {"ml-latest-small": RESOURCES / "ml-latest-small"}
"""Datasets shipped with the package, by the name :func:`load_dataset` accepts."""

FORMATS = ("llmrec", "movielens", "ml-100k", "ml-1m", "amazon2023", "recbole", "tables")
"""Values accepted by ``load_dataset(..., format=...)``."""


def detect_format(path: str | Path) -> str:
    """The :data:`FORMATS` entry of a dataset folder, from the files it holds."""
    root = _folder(path)
    if (root / DATASET_META).is_file():
        return "llmrec"
    if (root / "ratings.csv").is_file():
        return "movielens"
    if (root / "u.data").is_file():
        return "ml-100k"
    if (root / "ratings.dat").is_file():
        return "ml-1m"
    if _find_table(root, "interactions") is not None:
        return "tables"
    if any(root.glob("*.inter")):
        return "recbole"
    if _amazon_pairs(root):
        return "amazon2023"
    found = sorted(p.name for p in root.iterdir())[:12]
    raise DataError(
        "unrecognized dataset folder",
        file=str(root),
        value=found or None,
        hint=f"expected {DATASET_META} (a saved dataset), ratings.csv+movies.csv, u.data+u.item, "
        "ratings.dat+movies.dat, interactions.csv+items.csv, NAME.inter+NAME.item "
        "(or NAME.train/valid/test.inter), or X.jsonl+meta_X.jsonl; "
        f"or pass format= one of {FORMATS}",
    )


_LOADERS = {
    "llmrec": RecDataset.load,
    "movielens": load_movielens,
    "ml-100k": load_movielens_100k,
    "ml-1m": load_movielens_1m,
    "amazon2023": load_amazon2023_folder,
    "recbole": load_recbole,
    "tables": load_tables_folder,
}


def load_dataset(path: str | Path, format: str | None = None, **options: Any) -> RecDataset:
    """Load a dataset folder in any supported format, detected from its files unless ``format`` is given.

    ``path`` may also be the name of an embedded dataset (``"ml-latest-small"``).
    ``options`` go to the format's loader (e.g. ``mapping=`` and ``order_by=`` for
    ``"tables"``). The dataset name is the folder name (a saved dataset keeps its saved name).
    """
    root = EMBEDDED.get(str(path), Path(path))
    if not root.exists():
        raise DataError(
            "dataset not found",
            file=str(root),
            hint=f"give a folder, or an embedded name: {sorted(EMBEDDED)}",
        )
    fmt = format or detect_format(root)
    if fmt not in _LOADERS:
        raise DataError(f"unknown format {fmt!r}", file=str(root), value=fmt, hint=f"one of {FORMATS}")
    if fmt != "llmrec":  # a saved dataset keeps the name it was saved under
        options.setdefault("name", root.name)
    return _LOADERS[fmt](root, **options)
