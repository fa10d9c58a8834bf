"""Saving fitted candidate generators to a folder and loading them back, without pickle.

A folder written by :meth:`~llmrec.candidates.base.CandidateGenerator.save` holds::

    catalog.json         the ItemCatalog, once per folder
    generator.json       format version, generator name, constructor parameters, fitted flag
    item_counts.npy      training popularity (tie_rank is recomputed from it)
    NAME.npy / NAME.npz  each learned array (numpy / scipy.sparse)
    component0/ ...      fused only: each component's generator.json and arrays
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from llmrec.data.catalog import ItemCatalog
from llmrec.errors import ConfigError, DataError
from llmrec.io import atomic_dir, atomic_write_json
from llmrec.ranking import popularity_tie_rank

if TYPE_CHECKING:  # base imports this module
    from llmrec.candidates.base import CandidateGenerator

FORMAT_VERSION = 1
"""Bumped when the layout changes; a folder of a newer version is refused, not misread."""
META = "generator.json"
CATALOG = "catalog.json"


def save_array(path: Path, value: Any) -> None:
    """Write ``value`` to ``path.npz`` (scipy.sparse, uncompressed: faster) or ``path.npy``."""
    if sp.issparse(value):
        sp.save_npz(path.with_suffix(".npz"), value, compressed=False)
    else:
        np.save(path.with_suffix(".npy"), np.asarray(value), allow_pickle=False)


def load_array(path: Path) -> Any:
    """Read what :func:`save_array` wrote to ``path``."""
    sparse = path.with_suffix(".npz")
    if sparse.is_file():
        return sp.load_npz(sparse)
    return np.load(path.with_suffix(".npy"), allow_pickle=False)


def save_generator(gen: CandidateGenerator, path: str | os.PathLike[str]) -> Path:
    """Write fitted ``gen`` and its catalog to the folder ``path``, atomically."""
    gen._check_fitted()
    path = Path(path)
    with atomic_dir(path, marker=META) as tmp:
        atomic_write_json(tmp / CATALOG, gen.catalog.to_json())
        write_generator(gen, tmp)
    return path


def write_generator(gen: CandidateGenerator, folder: Path, fitted: bool = True) -> None:
    """Write ``generator.json`` and, when ``fitted``, the learned arrays of ``gen`` to ``folder``.

    The catalog is not written here: :func:`save_generator` writes it once per folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if fitted:
        save_array(folder / "item_counts", gen.item_counts)
        gen._save_state(folder)
    meta = {"format_version": FORMAT_VERSION, "name": gen.name, "fitted": fitted, "params": gen.params()}
    atomic_write_json(folder / META, meta)


def load_generator(path: str | os.PathLike[str], name: str | None = None) -> CandidateGenerator:
    """The fitted generator saved in the folder ``path``; scores as before saving, no refit.

    ``name``, when given, is the generator name the folder must hold. Raises
    :class:`~llmrec.errors.DataError` when the folder is not a saved generator and
    :class:`~llmrec.errors.ConfigError` for another or unknown generator, or a newer format.
    """
    folder = Path(path)
    catalog_file = folder / CATALOG
    if not catalog_file.is_file():
        where = "" if folder.is_dir() else f"; folder {folder} does not exist"
        raise DataError(
            "not a saved generator: catalog file missing",
            file=str(catalog_file),
            hint=f"give a folder written by CandidateGenerator.save(path){where}",
        )
    catalog = ItemCatalog.from_json(json.loads(catalog_file.read_text(encoding="utf-8")))
    return read_generator(folder, catalog, name)


def read_generator(folder: Path, catalog: ItemCatalog, name: str | None = None) -> CandidateGenerator:
    """The generator :func:`write_generator` wrote to ``folder``, on ``catalog``."""
    from llmrec.candidates import GENERATORS  # the registry imports every generator module

    meta_file = folder / META
    if not meta_file.is_file():
        raise DataError(
            "not a saved generator: generator file missing",
            file=str(meta_file),
            hint="give a folder written by CandidateGenerator.save(path)",
        )
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"{meta_file} has an unknown or newer format; this llmrec reads versions up to "
            f"{FORMAT_VERSION}: upgrade llmrec, or fit and save the generator again",
            parameter="format_version",
            value=version,
        )
    saved = meta.get("name")
    if saved not in GENERATORS or name not in (None, saved):
        expected = repr(name) if name else f"one of {', '.join(GENERATORS)}"
        raise ConfigError(
            f"{meta_file} holds an unknown or other generator; expected {expected}",
            parameter="name",
            value=saved,
        )
    gen = GENERATORS[saved]._from_saved(meta["params"], folder, catalog)
    if meta["fitted"]:
        gen.catalog = catalog
        gen.item_counts = load_array(folder / "item_counts")
        gen.tie_rank = popularity_tie_rank(gen.item_counts)
        gen._load_state(folder)
    return gen
