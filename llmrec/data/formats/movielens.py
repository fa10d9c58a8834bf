"""MovieLens: CSV folders (ml-latest-small, ml-25m, ...), 100K (``u.data``) and 1M/10M (``ratings.dat``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from llmrec.data.formats.canonical import _finish, _interactions, _items
from llmrec.data.formats.reading import (
    _check_columns,
    _check_field_count,
    _check_rows,
    _folder,
    _read_text_table,
    _require_file,
    _separator_hint,
)
from llmrec.data.formats.values import _ids, _order_key, _ratings
from llmrec.data.schema import RecDataset
from llmrec.errors import DataError

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""The 19 genre flags of ``u.item``, in order (used when ``u.genre`` is absent)."""


def load_movielens(path: str | Path, *, name: str | None = None, domain: str = "movies") -> RecDataset:
    """MovieLens CSV folder (ml-latest-small, ml-25m, ...): ``ratings.csv`` + ``movies.csv``.

    Genres become the item ``text`` (space separated; "(no genres listed)" is dropped).
    """
    root = _folder(path)
    rfile, mfile = root / "ratings.csv", root / "movies.csv"
    ratings = _read_text_table(rfile, ",")
    _check_columns(ratings, ["userId", "movieId", "rating", "timestamp"], rfile)
    _check_rows(ratings, rfile)
    movies = _read_text_table(mfile, ",")
    _check_columns(movies, ["movieId", "title", "genres"], mfile)
    _check_rows(movies, mfile)
    columns = ["userId", "movieId", "rating", "timestamp"]
    inter = _rating_interactions([ratings[c] for c in columns], rfile, columns, 2, domain)
    items = _items(
        _ids(movies["movieId"], mfile, "movieId"), movies["title"], _genre_text(movies["genres"]), domain
    )
    return _finish(
        name or root.name,
        inter,
        items,
        order_by="timestamp",
        source=str(root),
        inter_file=rfile,
        item_column="movieId",
    )


def _rating_interactions(
    columns: Sequence[pd.Series], path: Path, names: Sequence[str], first_line: int, domain: str
) -> pd.DataFrame:
    """Interactions from MovieLens rating columns in the order user, item, rating, timestamp."""
    user, item, rating, stamp = columns
    return _interactions(
        _ids(user, path, names[0], first_line),
        _ids(item, path, names[1], first_line),
        _order_key(stamp, path, names[3], first_line),
        _ratings(rating, path, names[2], first_line),
        domain,
    )


def _genre_text(genres: pd.Series) -> list[str]:
    """``A|B`` genre lists as space-separated text; "(no genres listed)" becomes empty."""
    text = genres.fillna("").str.replace("(no genres listed)", "", regex=False)
    return text.str.replace("|", " ", regex=False).str.strip().tolist()


def _ml100k_genres(root: Path) -> list[str]:
    """Genre names from ``u.genre`` (``name|index`` lines) or the standard 19."""
    gfile = root / "u.genre"
    if not gfile.is_file():
        return list(ML100K_GENRES)
    pairs = []
    for number, line in enumerate(gfile.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        genre, sep, index = line.rpartition("|")
        if not sep or not index.strip().isdigit():
            raise DataError(
                f"expected 'name|index' at line {number}",
                file=str(gfile),
                value=line,
                hint="check the separator",
            )
        pairs.append((int(index), genre))
    return [genre for _, genre in sorted(pairs)]


def load_movielens_100k(path: str | Path, *, name: str | None = None, domain: str = "movies") -> RecDataset:
    """MovieLens 100K folder: ``u.data`` (tab: user, item, rating, timestamp) + ``u.item``.

    ``u.item`` is pipe-separated latin-1 text: id, title, release date, video
    release date, IMDb URL, then one 0/1 flag per genre (names from ``u.genre``
    when present). The flagged genres (except "unknown") become the item ``text``.
    """
    root = _folder(path)
    dfile, ifile = root / "u.data", root / "u.item"
    names = ["user id", "item id", "rating", "timestamp"]
    data = _read_text_table(dfile, "\t", header=False)
    _check_rows(data, dfile)
    _check_field_count(data, 4, dfile, "\t", names)
    genres = _ml100k_genres(root)
    item_names = ["movie id", "title", "release date", "video release date", "IMDb URL", *genres]
    movies = _read_text_table(ifile, "|", header=False, encoding="latin-1", quoting=csv.QUOTE_NONE)
    _check_rows(movies, ifile)
    _check_field_count(movies, len(item_names), ifile, "|", item_names)
    inter = _rating_interactions([data[i] for i in range(4)], dfile, names, 1, domain)
    flags = movies.iloc[:, 5 : 5 + len(genres)].fillna("0").to_numpy() == "1"
    text = [" ".join(g for g, on in zip(genres, row, strict=True) if on and g != "unknown") for row in flags]
    items = _items(_ids(movies[0], ifile, "movie id", 1), movies[1], text, domain)
    return _finish(
        name or root.name,
        inter,
        items,
        order_by="timestamp",
        source=str(root),
        inter_file=dfile,
        item_column="item id",
    )


def _read_double_colon(path: Path, names: Sequence[str]) -> pd.DataFrame:
    """A ``::``-separated latin-1 file without header (MovieLens 1M/10M ``ratings.dat``)."""
    text = _require_file(path).read_text(encoding="latin-1")
    first = text.split("\n", 1)[0]
    if text.strip() and "::" not in first:
        raise DataError(
            f"expected {len(names)} '::'-separated fields ({', '.join(names)})",
            file=str(path),
            column=names[1],
            value=first,
            hint=_separator_hint(first, "::"),
        )
    if not text.strip():
        raise DataError("file is empty", file=str(path))
    frame = _read_text_table_from(io.StringIO(text.replace("::", "\x1f")), path)
    _check_field_count(frame, len(names), path, "::", names)
    return frame


def _read_text_table_from(buffer: io.StringIO, path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(
            buffer,
            sep="\x1f",
            header=None,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            quoting=csv.QUOTE_NONE,
        )
    except pd.errors.ParserError as err:
        raise DataError(f"cannot parse the file: {err}", file=str(path), hint="check the separator") from err
    frame.columns = list(range(frame.shape[1]))
    return frame


def _read_movies_dat(path: Path) -> pd.DataFrame:
    """``MovieID::Title::Genres`` lines; a title may contain ':' (split at the first and last '::')."""
    rows = []
    for number, line in enumerate(_require_file(path).read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        movie, sep1, rest = line.partition("::")
        title, sep2, genres = rest.rpartition("::")
        if not (sep1 and sep2):
            raise DataError(
                f"expected 'MovieID::Title::Genres' at line {number}",
                file=str(path),
                column="Title",
                value=line,
                hint=_separator_hint(line, "::"),
            )
        rows.append((movie, title, genres))
    if not rows:
        raise DataError("table has no rows", file=str(path))
    return pd.DataFrame(rows, columns=["MovieID", "Title", "Genres"])


def load_movielens_1m(path: str | Path, *, name: str | None = None, domain: str = "movies") -> RecDataset:
    """MovieLens 1M (or 10M) folder: ``ratings.dat`` + ``movies.dat``, ``::``-separated latin-1.

    ``ratings.dat``: UserID::MovieID::Rating::Timestamp; ``movies.dat``:
    MovieID::Title::Genres (genres ``|``-separated, they become the item ``text``).
    """
    root = _folder(path)
    rfile, mfile = root / "ratings.dat", root / "movies.dat"
    names = ["UserID", "MovieID", "Rating", "Timestamp"]
    ratings = _read_double_colon(rfile, names)
    movies = _read_movies_dat(mfile)
    inter = _rating_interactions([ratings[i] for i in range(4)], rfile, names, 1, domain)
    items = _items(movies["MovieID"], movies["Title"], _genre_text(movies["Genres"]), domain)
    return _finish(
        name or root.name,
        inter,
        items,
        order_by="timestamp",
        source=str(root),
        inter_file=rfile,
        item_column="MovieID",
    )
