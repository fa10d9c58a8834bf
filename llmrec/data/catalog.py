"""Integer indexing of items, and the user histories generators consume."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmrec.data.schema import RecDataset

_TRAILING_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
_ARTICLES = ("the", "a", "an")


def normalize_title(title: str) -> str:
    """Case/accent/punctuation-insensitive form of a title, for matching typed titles."""
    text = unicodedata.normalize("NFKD", title).casefold()
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(re.findall(r"\w+", text))


def loose_title_key(title: str) -> str:
    """A looser key: no trailing "(...)" and no leading or catalog-style trailing article,
    so "The Incredibles" finds "Incredibles, The (2004)" and "Heat" finds "Heat (1995)"."""
    words = normalize_title(_TRAILING_PAREN.sub("", title)).split()
    if len(words) > 1 and words[-1] in _ARTICLES:
        words = words[:-1]
    elif len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def split_titles(text: str) -> list[str]:
    """Titles of a ``;``-separated string (``--history``, :attr:`History.text`), stripped,
    empties dropped."""
    return [t.strip() for t in text.split(";") if t.strip()]


@dataclass
class ItemCatalog:
    """Items with contiguous integer indices ``0..n_items-1`` (sorted by item id)."""

    item_ids: np.ndarray
    titles: list[str]
    texts: list[str]
    domains: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _by_title: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {item: i for i, item in enumerate(self.item_ids.tolist())}
        # Tiers, tried in order: exact, without a trailing "(...)", without articles too.
        self._title_tiers: list[dict[str, int]] = [self._by_title, {}, {}]
        for i, title in enumerate(self.titles):
            self._by_title.setdefault(normalize_title(title), i)
            self._title_tiers[1].setdefault(normalize_title(_TRAILING_PAREN.sub("", title)), i)
            self._title_tiers[2].setdefault(loose_title_key(title), i)

    @classmethod
    def from_dataset(cls, data: RecDataset) -> ItemCatalog:
        """Catalog of the items that occur in ``data.interactions`` (after cleaning)."""
        used = set(data.interactions.unique("item_id"))
        items = data.items.to_pandas()
        items = items[items["item_id"].isin(used)].sort_values("item_id", kind="stable")
        return cls(
            item_ids=items["item_id"].to_numpy(dtype=object),
            titles=items["title"].tolist(),
            texts=items["text"].tolist(),
            domains=items["domain"].to_numpy(dtype=object),
        )

    def to_json(self) -> dict[str, list[str]]:
        """The catalog's fields as plain lists (:meth:`from_json` reads them back)."""
        return {
            "item_ids": self.item_ids.tolist(),
            "titles": list(self.titles),
            "texts": list(self.texts),
            "domains": self.domains.tolist(),
        }

    @classmethod
    def from_json(cls, fields: dict[str, list[str]]) -> ItemCatalog:
        """Catalog from :meth:`to_json`'s output."""
        return cls(
            item_ids=np.asarray(fields["item_ids"], dtype=object),
            titles=list(fields["titles"]),
            texts=list(fields["texts"]),
            domains=np.asarray(fields["domains"], dtype=object),
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def index_of(self, item_ids: Iterable[str]) -> np.ndarray:
        """Indices of the given item ids; raises KeyError naming the first unknown id."""
        out = []
        for item in item_ids:
            try:
                out.append(self._index[item])
            except KeyError:
                raise KeyError(f"item id {item!r} is not in the catalog") from None
        return np.asarray(out, dtype=np.int64)

    def match_title(self, title: str) -> int | None:
        """Index of the item whose title matches ``title``: exactly after normalization, else
        without a trailing "(...)", else by :func:`loose_title_key`; within a tier the first
        item in id order wins. None when nothing matches."""
        keys = (
            normalize_title(title),
            normalize_title(_TRAILING_PAREN.sub("", title)),
            loose_title_key(title),
        )
        for tier, key in zip(self._title_tiers, keys, strict=True):
            if key in tier:
                return tier[key]
        return None

    def domain_mask(self, domain: str | None) -> np.ndarray | None:
        """Boolean mask of the items of ``domain`` (``None`` = all items)."""
        if domain is None:
            return None
        mask = self.domains == domain
        if not mask.any():
            raise ValueError(f"no items of domain {domain!r}; domains: {sorted(set(self.domains))}")
        return mask

    def item_text(self, index: int) -> str:
        """Title plus the other text fields of one item."""
        text = self.texts[index]
        return f"{self.titles[index]} {text}" if text else self.titles[index]


@dataclass(frozen=True)
class History:
    """What a generator knows about one user: item indices (oldest first) and/or free text.

    ``text`` is the cold-start entry point: titles a new user typed. Generators that
    need item ids (CF) use ``items`` only; BM25 uses both.
    """

    items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    text: str = ""

    @classmethod
    def from_titles(cls, titles: Sequence[str], catalog: ItemCatalog) -> History:
        """History of a new user from typed titles: titles found in the catalog become
        items, the others stay as free text (``;``-separated)."""
        found = [catalog.match_title(t) for t in titles]
        items = np.asarray([i for i in found if i is not None], dtype=np.int64)
        unmatched = [t for t, i in zip(titles, found) if i is None]
        return cls(items=items, text="; ".join(unmatched))

    @property
    def is_empty(self) -> bool:
        return len(self.items) == 0 and not self.text.strip()
