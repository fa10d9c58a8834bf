"""Canonical tables of llmrec, stored as Hugging Face ``datasets`` (Arrow).

Every loader returns a :class:`RecDataset` with exactly these columns, so the
rest of the system never sees a source format.

interactions: ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64; the
order key: a Unix time, or a step number when ``order_by == "step"``),
``rating`` (float32, NaN when the source has none), ``domain`` (str).

items: ``item_id`` (str), ``title`` (str), ``text`` (str: other text fields,
e.g. genres or categories, space separated; may be empty), ``domain`` (str).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np

from llmrec.errors import ConfigError, DataError
from llmrec.io import atomic_dir, atomic_write_json

INTERACTION_FEATURES = datasets.Features(
    {
        "user_id": datasets.Value("string"),
        "item_id": datasets.Value("string"),
        "timestamp": datasets.Value("int64"),
        "rating": datasets.Value("float32"),
        "domain": datasets.Value("string"),
    }
)
ITEM_FEATURES = datasets.Features(
    {
        "item_id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "text": datasets.Value("string"),
        "domain": datasets.Value("string"),
    }
)

logger = logging.getLogger(__name__)

OrderBy = Literal["timestamp", "step"]

DATASET_META = "llmrec_dataset.json"
"""The metadata file of a folder written by :meth:`RecDataset.save` (how loaders recognize one)."""


@dataclass
class RecDataset:
    """Interactions plus item catalog of one dataset (possibly several domains)."""

    name: str
    interactions: datasets.Dataset
    items: datasets.Dataset
    order_by: OrderBy = "timestamp"
    source: str = ""
    log: list[str] = field(default_factory=list)
    """Human-readable record of what loading and cleaning did, with counts."""

    def __post_init__(self) -> None:
        for table, features, label in (
            (self.interactions, INTERACTION_FEATURES, "interactions"),
            (self.items, ITEM_FEATURES, "items"),
        ):
            missing = [c for c in features if c not in table.column_names]
            if missing:
                raise ValueError(f"{label} table lacks canonical columns {missing}")

    @property
    def domains(self) -> list[str]:
        """Sorted list of the domains present in the interactions."""
        return sorted(set(self.interactions.unique("domain")))

    def only_domain(self, domain: str) -> RecDataset:
        """This dataset restricted to one domain: that domain's interactions and items only (a
        single-domain dataset cut out of a multi-domain one, before cleaning). An unknown domain
        is a :class:`~llmrec.errors.ConfigError` listing the dataset's domains."""
        domains = self.domains
        if domain not in domains:
            raise ConfigError(
                f"not a domain of {self.name}; domains present: {domains}",
                parameter="only_domain",
                value=domain,
            )
        inter = self.interactions.to_pandas()
        items = self.items.to_pandas()
        inter = inter[inter["domain"] == domain].reset_index(drop=True)
        items = items[items["domain"] == domain].reset_index(drop=True)
        line = (
            f"only_domain: kept the {len(inter)} interactions and {len(items)} items of domain {domain!r} "
            f"(of {len(self.interactions)} and {len(self.items)}; domains present: {domains})"
        )
        logger.info(line)
        return dataclasses.replace(
            self,
            interactions=datasets.Dataset.from_pandas(
                inter, features=INTERACTION_FEATURES, preserve_index=False
            ),
            items=datasets.Dataset.from_pandas(items, features=ITEM_FEATURES, preserve_index=False),
            log=[*self.log, line],
        )

    def stats(self) -> dict[str, Any]:
        """Counts a person wants to see first: users, items, interactions, density, per domain."""
        inter = self.interactions.select_columns(["user_id", "item_id", "domain"]).to_pandas()
        users = inter["user_id"].to_numpy(dtype=object)
        items = inter["item_id"].to_numpy(dtype=object)
        doms = inter["domain"].to_numpy(dtype=object)
        n_users = len(np.unique(users))
        n_items = len(np.unique(items))
        per_user = np.unique(users, return_counts=True)[1] if len(users) else np.zeros(1)
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "order_by": self.order_by,
            "users": int(n_users),
            "items_interacted": int(n_items),
            "catalog_items": len(self.items),
            "interactions": len(users),
            "density": float(len(users) / max(1, n_users * n_items)),
            "interactions_per_user": {
                "min": int(per_user.min()),
                "median": float(np.median(per_user)),
                "max": int(per_user.max()),
            },
            "domains": {},
        }
        for dom in sorted(set(doms.tolist())):
            mask = doms == dom
            out["domains"][dom] = {
                "users": int(len(np.unique(users[mask]))),
                "items": int(len(np.unique(items[mask]))),
                "interactions": int(mask.sum()),
            }
        return out

    def save(self, path: str | Path) -> Path:
        """Save both tables (Arrow) and the metadata to a folder, atomically (see :func:`atomic_dir`).

        An existing folder is replaced only if it is empty or a previous save.
        """
        path = Path(path)
        with atomic_dir(path, marker=DATASET_META) as tmp:
            self.interactions.save_to_disk(str(tmp / "interactions"))
            self.items.save_to_disk(str(tmp / "items"))
            meta = {"name": self.name, "order_by": self.order_by, "source": self.source, "log": self.log}
            atomic_write_json(tmp / DATASET_META, meta)
        return path

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> RecDataset:
        """Load a folder written by :meth:`save`; ``name`` overrides the saved name.

        A damaged folder (unreadable metadata, a missing table) raises :class:`DataError`.
        """
        path = Path(path)
        try:
            meta = json.loads((path / DATASET_META).read_text(encoding="utf-8"))
            interactions = datasets.load_from_disk(str(path / "interactions"))
            items = datasets.load_from_disk(str(path / "items"))
            order_by = meta["order_by"]
        except (ValueError, KeyError, TypeError, OSError) as err:  # JSON, decoding, a missing key or file
            raise DataError(
                f"cannot read the saved dataset ({type(err).__name__}: {err})",
                file=str(path),
                hint="save it again: `llmrec data SOURCE --save FOLDER`",
            ) from err
        return cls(
            name=name or meta["name"],
            interactions=interactions,
            items=items,
            order_by=order_by,
            source=meta.get("source", ""),
            log=list(meta.get("log", [])),
        )
