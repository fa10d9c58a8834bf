"""A request's user or history -> the :class:`~llmrec.data.catalog.History` the pipeline ranks for.

Titles take the path of ``llmrec recommend --history``: split on ``;`` (:func:`split_titles`),
matched against the catalog by :meth:`History.from_titles`, unmatched ones kept as free text;
the prompt renderer sanitises them (:mod:`llmrec.llm.sanitize`) like any title. Item ids are
looked up with :meth:`ItemCatalog.index_of`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from llmrec.data.catalog import History, ItemCatalog, split_titles
from llmrec.service.errors import InputError
from llmrec.service.schemas import HistoryEntry, RecommendRequest


class HistoryResolver:
    """Turns requests into histories, or an :class:`InputError` naming the field and value."""

    def __init__(self, catalog: ItemCatalog, users: Mapping[str, np.ndarray], max_history: int) -> None:
        self.catalog = catalog
        self.users = users
        self.max_history = max_history

    def resolve(self, request: RecommendRequest, prefix: str = "") -> History:
        """The known user's items, or the history the request typed."""
        if (request.user is None) == (request.history is None):
            raise InputError(
                400,
                prefix + "user",
                request.user,
                "give exactly one of user (a known user id) or history (item ids and/or titles)",
            )
        if request.user is not None:
            return self._known_user(str(request.user), prefix + "user")
        return self._typed(request.history or [], prefix + "history")

    def _known_user(self, user: str, field: str) -> History:
        items = self.users.get(user)
        if items is None:
            example = next(iter(self.users), None)
            hint = f"; e.g. {example!r}" if example is not None else ""
            raise InputError(404, field, user, f"unknown user id{hint}", error="unknown_user")
        return History(items=np.asarray(items, dtype=np.int64))

    def _too_long(self, field: str, count: int) -> InputError:
        message = f"too many history entries; at most {self.max_history} (service.max_history)"
        return InputError(400, field, f"{count} entries", message)

    def _typed(self, entries: list[HistoryEntry], field: str) -> History:
        if len(entries) > self.max_history:
            raise self._too_long(field, len(entries))
        items: list[int] = []
        unmatched: list[str] = []
        for i, entry in enumerate(entries):
            if entry.item_id is not None:
                try:
                    items.append(int(self.catalog.index_of([entry.item_id])[0]))
                except KeyError:
                    raise InputError(
                        400, f"{field}[{i}].item_id", entry.item_id, "unknown item id", error="unknown_item"
                    ) from None
                continue
            titles = split_titles(entry.title or "")
            if titles:
                typed = History.from_titles(titles, self.catalog)
                items.extend(int(x) for x in typed.items)
                unmatched.extend(split_titles(typed.text))
        if len(items) + len(unmatched) > self.max_history:  # ';' packs several titles in one entry
            raise self._too_long(field, len(items) + len(unmatched))
        history = History(items=np.asarray(items, dtype=np.int64), text="; ".join(unmatched))
        if history.is_empty:
            shown = [e.title if e.item_id is None else e.item_id for e in entries]
            raise InputError(400, field, shown, "empty history: give at least one item id or title")
        return history
