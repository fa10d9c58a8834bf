"""Loaders: source formats -> canonical :class:`RecDataset` tables.

Supported sources (each loader names the files it reads):

- MovieLens CSV (ml-latest-small, ml-25m, ...): ``ratings.csv`` + ``movies.csv``
  (:func:`load_movielens`);
- MovieLens 100K: ``u.data`` + ``u.item`` (+ ``u.genre``) (:func:`load_movielens_100k`);
- MovieLens 1M / 10M: ``ratings.dat`` + ``movies.dat`` (:func:`load_movielens_1m`);
- Amazon Reviews 2023 JSONL: a reviews file + its ``meta_`` file (:func:`load_amazon2023`);
- RecBole atomic files: ``NAME.inter`` + ``NAME.item`` (:func:`load_recbole`);
- any CSV/TSV/Parquet pair with a :class:`ColumnMapping` (:func:`load_tables`).

:func:`load_dataset` detects the format of a folder. Every problem with the
input raises one :class:`~llmrec.errors.DataError` naming the file, the column
and an example of the bad value. Every value is read as text first, so ids keep
their leading zeros and a bad number is reported as it was written. Titles are
stripped of surrounding blanks; an item without a title gets ``""`` (cleaning
drops it).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from llmrec.data.schema import INTERACTION_FEATURES, ITEM_FEATURES, OrderBy, RecDataset
from llmrec.errors import DataError

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
EMBEDDED = {"ml-latest-small": RESOURCES / "ml-latest-small"}
"""Datasets shipped with the package, by the name :func:`load_dataset` accepts."""

FORMATS = ("movielens", "ml-100k", "ml-1m", "amazon2023", "recbole", "tables")
"""Values accepted by ``load_dataset(..., format=...)``."""

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

AMAZON_TEXT_FIELDS = ("categories", "store", "features", "description")
"""Meta fields of Amazon Reviews 2023 joined into the item ``text`` by default."""

RECBOLE_TITLE_FIELDS = ("title", "movie_title", "item_title", "name")
"""Item-file fields RecBole datasets use for the title (the first present wins)."""

TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".pq")
_SEPARATORS = (",", ";", "\t", "|", "::")
_SEP_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe", "::": "'::'"}


@dataclass
class ColumnMapping:
    """Which source columns hold the canonical fields (for :func:`load_tables`).

    Column names are those of the header of the interactions file (``user``,
    ``item``, ``time``, ``rating``, ``domain``) and of the items file (``item_id``,
    ``title``, ``text``, ``item_domain``).
    """

    user: str = "user_id"
    item: str = "item_id"
    time: str | None = "timestamp"
    """Order key (Unix time or step). ``None``: the row order of the file is the step."""
    rating: str | None = None
    domain: str | None = None
    """Interaction domain column; ``None``: taken from the item's domain, else the dataset's."""
    item_id: str | None = None
    """Id column of the items file; ``None``: same name as ``item``."""
    title: str = "title"
    text: list[str] = field(default_factory=list)
    """Items-file columns joined (space separated) into the item ``text``."""
    item_domain: str | None = None

    @property
    def items_key(self) -> str:
        """Name of the id column in the items file."""
        return self.item_id or self.item


# --------------------------------------------------------------------------- reading helpers


def _require_file(path: Path) -> Path:
    if not path.is_file():
        found = sorted(p.name for p in path.parent.iterdir())[:12] if path.parent.is_dir() else []
        hint = f"files in {path.parent}: {found}" if found else f"folder {path.parent} does not exist"
        raise DataError("file not found", file=str(path), hint=hint)
    return path


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
    except UnicodeDecodeError as err:
        raise DataError(
            f"file is not valid {encoding} text ({err.reason})",
            file=str(path),
            value=err.object[max(0, err.start - 20) : err.end + 20],
            hint=f"save the file as {encoding}",
        ) from err
    except pd.errors.ParserError as err:
        raise DataError(
            f"cannot parse the file: {err}", file=str(path), hint=_separator_hint("", sep)
        ) from err
    if not header:
        frame.columns = list(range(frame.shape[1]))
    return frame


def _read_any_table(path: Path) -> pd.DataFrame:
    """CSV (comma), TSV (tab) or Parquet, chosen by the file suffix."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        _require_file(path)
        try:
            return pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise DataError(f"cannot read Parquet file: {err}", file=str(path)) from err
    return _read_text_table(path, _table_separator(path))


def _table_separator(path: Path) -> str:
    return "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","


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


# --------------------------------------------------------------------------- value conversion


def _ids(values: pd.Series, path: Path, column: str, first_line: int = 2) -> pd.Series:
    """Ids as strings; a missing id raises with its line number."""
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError(f"missing id at line {row + first_line}", file=str(path), column=column)
    if pd.api.types.is_float_dtype(values) and bool((values % 1 == 0).all()):
        values = values.astype(np.int64)
    return values.astype(str).reset_index(drop=True)


def _order_key(values: pd.Series, path: Path, column: str, first_line: int = 2) -> np.ndarray:
    """Timestamps/steps as int64: numbers, or datetimes (-> Unix seconds); else the first bad value raises."""
    if pd.api.types.is_datetime64_any_dtype(values):
        if values.isna().any():
            row = int(np.argmax(values.isna().to_numpy()))
            raise DataError(f"missing timestamp at line {row + first_line}", file=str(path), column=column)
        stamps = pd.to_datetime(values, utc=True)
        return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raw = values.iloc[row]
        what = "missing" if pd.isna(raw) else "non-numeric"
        raise DataError(
            f"{what} timestamp at line {row + first_line}",
            file=str(path),
            column=column,
            value=None if pd.isna(raw) else raw,
            hint="timestamps must be numbers (Unix time or step); convert dates first, "
            "or store them as a Parquet datetime column",
        )
    if pd.api.types.is_integer_dtype(numbers):
        return numbers.to_numpy(dtype=np.int64)
    return np.floor(numbers.to_numpy(dtype=np.float64)).astype(np.int64)


def _ratings(values: pd.Series, path: Path, column: str, first_line: int = 2) -> np.ndarray:
    """Ratings as float32; missing cells give NaN, any other non-number raises."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = (numbers.isna() & values.notna()).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"non-numeric rating at line {row + first_line}",
            file=str(path),
            column=column,
            value=values.iloc[row],
            hint="ratings must be numbers; leave the cell empty when there is none",
        )
    return numbers.to_numpy(dtype=np.float32)


def _text(value: Any) -> str:
    """Flatten a cell (None, str, number or nested list) into one space-separated string."""
    if isinstance(value, list | tuple | np.ndarray):
        return " ".join(t for t in (_text(v) for v in value) if t)
    if value is None or pd.isna(value):
        return ""
    return str(value).strip()


def _join_text(columns: Sequence[pd.Series | list[Any]], n: int) -> list[str]:
    """Row-wise join of several text columns, skipping empty pieces."""
    if not columns:
        return [""] * n
    rows = zip(*[list(c) for c in columns], strict=True)
    return [" ".join(p for p in (_text(v) for v in row) if p) for row in rows]


# --------------------------------------------------------------------------- canonical tables


def _interactions(
    user: pd.Series,
    item: pd.Series,
    timestamp: np.ndarray,
    rating: np.ndarray | None,
    domain: str | pd.Series | np.ndarray,
) -> pd.DataFrame:
    n = len(user)
    return pd.DataFrame(
        {
            "user_id": np.asarray(user, dtype=object),
            "item_id": np.asarray(item, dtype=object),
            "timestamp": np.asarray(timestamp, dtype=np.int64),
            "rating": np.full(n, np.nan, dtype=np.float32) if rating is None else rating,
            "domain": domain if isinstance(domain, str) else np.asarray(domain, dtype=object),
        }
    )


def _items(
    item: pd.Series, title: pd.Series | list[str], text: list[str], domain: str | pd.Series | np.ndarray
) -> pd.DataFrame:
    titles = pd.Series(title, dtype=object).fillna("").astype(str).str.strip()
    return pd.DataFrame(
        {
            "item_id": np.asarray(item, dtype=object),
            "title": titles.to_numpy(dtype=object),
            "text": np.asarray(text, dtype=object),
            "domain": domain if isinstance(domain, str) else np.asarray(domain, dtype=object),
        }
    )


def _log(log: list[str], line: str) -> None:
    log.append(line)
    logger.info(line)


def _finish(
    name: str,
    inter: pd.DataFrame,
    items: pd.DataFrame,
    *,
    order_by: OrderBy,
    source: str,
    inter_file: Path,
    item_column: str,
    log: list[str] | None = None,
) -> RecDataset:
    """Checks shared by every loader (duplicate catalog rows, join), then the Arrow tables."""
    log = list(log or [])
    dup = items["item_id"].duplicated()
    if dup.any():
        _log(log, f"dropped {int(dup.sum())} duplicate catalog rows (same item id; kept the first)")
        items = items[~dup.to_numpy()].reset_index(drop=True)
    known = inter["item_id"].isin(pd.Index(items["item_id"])).to_numpy()
    if not known.any():
        raise DataError(
            "no interaction item id joins the item catalog",
            file=str(inter_file),
            column=item_column,
            value=inter["item_id"].iloc[0],
            hint=f"item ids must match the catalog's ids (a catalog id: {items['item_id'].iloc[0]!r}); "
            "check that both files come from the same dataset",
        )
    if not known.all():
        unknown = inter.loc[~known, "item_id"]
        _log(
            log,
            f"{int((~known).sum())} interactions refer to {unknown.nunique()} item ids absent from "
            f"the catalog (e.g. {unknown.iloc[0]!r}); clean() drops them",
        )
    line = (
        f"loaded {len(inter)} interactions ({inter['user_id'].nunique()} users, "
        f"{inter['item_id'].nunique()} items) and {len(items)} catalog items from {source}"
    )
    log.insert(0, line)
    logger.info(line)
    return RecDataset(
        name=name,
        interactions=datasets.Dataset.from_pandas(inter, features=INTERACTION_FEATURES, preserve_index=False),
        items=datasets.Dataset.from_pandas(items, features=ITEM_FEATURES, preserve_index=False),
        order_by=order_by,
        source=source,
        log=log,
    )


def _folder(path: str | Path) -> Path:
    root = Path(path)
    if root.is_file():
        raise DataError(
            "expected a dataset folder, got a file", file=str(root), hint=f"pass its folder {root.parent}"
        )
    if not root.is_dir():
        raise DataError("dataset folder not found", file=str(root))
    return root


# --------------------------------------------------------------------------- MovieLens


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
    inter = _interactions(
        _ids(ratings["userId"], rfile, "userId"),
        _ids(ratings["movieId"], rfile, "movieId"),
        _order_key(ratings["timestamp"], rfile, "timestamp"),
        _ratings(ratings["rating"], rfile, "rating"),
        domain,
    )
    genres = movies["genres"].fillna("").str.replace("(no genres listed)", "", regex=False)
    items = _items(
        _ids(movies["movieId"], mfile, "movieId"),
        movies["title"],
        genres.str.replace("|", " ", regex=False).str.strip().tolist(),
        domain,
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
    inter = _interactions(
        _ids(data[0], dfile, names[0], 1),
        _ids(data[1], dfile, names[1], 1),
        _order_key(data[3], dfile, names[3], 1),
        _ratings(data[2], dfile, names[2], 1),
        domain,
    )
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
    inter = _interactions(
        _ids(ratings[0], rfile, names[0], 1),
        _ids(ratings[1], rfile, names[1], 1),
        _order_key(ratings[3], rfile, names[3], 1),
        _ratings(ratings[2], rfile, names[2], 1),
        domain,
    )
    genres = (
        movies["Genres"].str.replace("(no genres listed)", "", regex=False).str.replace("|", " ", regex=False)
    )
    items = _items(movies["MovieID"], movies["Title"], genres.str.strip().tolist(), domain)
    return _finish(
        name or root.name,
        inter,
        items,
        order_by="timestamp",
        source=str(root),
        inter_file=rfile,
        item_column="MovieID",
    )


# --------------------------------------------------------------------------- Amazon Reviews 2023


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
        except (OSError, UnicodeDecodeError) as err:
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


def _concat(name: str, parts: list[RecDataset], *, source: str, inter_file: Path) -> RecDataset:
    """One dataset from several (e.g. one per Amazon domain)."""
    inter = pd.concat([p.interactions.to_pandas() for p in parts], ignore_index=True)
    items = pd.concat([p.items.to_pandas() for p in parts], ignore_index=True)
    log = [line for p in parts for line in p.log]
    return _finish(
        name,
        inter,
        items,
        order_by=parts[0].order_by,
        source=source,
        inter_file=inter_file,
        item_column="item_id",
        log=log,
    )


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


# --------------------------------------------------------------------------- RecBole atomic files


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


def load_recbole(path: str | Path, *, name: str | None = None, domain: str | None = None) -> RecDataset:
    """RecBole atomic files in a folder: ``NAME.inter`` + ``NAME.item`` (NAME = folder name by default).

    ``.inter`` needs ``user_id`` and ``item_id``; ``rating`` and ``timestamp`` are
    optional (without a timestamp the row order is the step). ``.item`` needs
    ``item_id`` and a title field (one of :data:`RECBOLE_TITLE_FIELDS`); its other
    token / token_seq fields (genre, categories, brand, ...) become the item ``text``.
    """
    root = _folder(path)
    name = name or root.name
    ifile = root / f"{name}.inter"
    if not ifile.is_file():
        found = sorted(root.glob("*.inter"))
        ifile = found[0] if len(found) == 1 else ifile
    inter_raw, inter_types = _read_recbole(ifile)
    _check_columns(inter_raw, ["user_id", "item_id"], ifile, "\t")
    _check_rows(inter_raw, ifile)
    item_file = ifile.with_suffix(".item")
    items_raw, item_types = _read_recbole(item_file)
    title = next((f for f in RECBOLE_TITLE_FIELDS if f in items_raw.columns), None)
    _check_columns(items_raw, ["item_id", title or "title"], item_file, "\t")
    _check_rows(items_raw, item_file)
    domain = domain or name
    has_time = "timestamp" in inter_types
    inter = _interactions(
        _ids(inter_raw["user_id"], ifile, "user_id"),
        _ids(inter_raw["item_id"], ifile, "item_id"),
        _order_key(inter_raw["timestamp"], ifile, "timestamp") if has_time else np.arange(len(inter_raw)),
        _ratings(inter_raw["rating"], ifile, "rating") if "rating" in inter_types else None,
        domain,
    )
    text_cols = [
        c for c, kind in item_types.items() if c not in ("item_id", title) and kind in ("token", "token_seq")
    ]
    items = _items(
        _ids(items_raw["item_id"], item_file, "item_id"),
        items_raw[title],
        _join_text([items_raw[c] for c in text_cols], len(items_raw)),
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


# --------------------------------------------------------------------------- generic tables


def _first_present(columns: Sequence[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in columns), None)


def infer_mapping(interaction_columns: Sequence[str], item_columns: Sequence[str]) -> ColumnMapping:
    """A :class:`ColumnMapping` from common header names (``user_id``/``userId``/``user``, ...).

    The order key is ``timestamp`` (or ``time``), else ``step``; every items
    column other than id, title and domain becomes item text.
    """
    cols, icols = list(interaction_columns), list(item_columns)
    user = _first_present(cols, ("user_id", "userId", "user", "UserID")) or "user_id"
    item = (
        _first_present(cols, ("item_id", "itemId", "item", "parent_asin", "movieId", "ItemID")) or "item_id"
    )
    time = _first_present(cols, ("timestamp", "time", "step")) or "timestamp"
    title = _first_present(icols, ("title", "name", "item_title")) or "title"
    item_domain = "domain" if "domain" in icols else None
    return ColumnMapping(
        user=user,
        item=item,
        time=time,
        rating="rating" if "rating" in cols else None,
        domain="domain" if "domain" in cols else None,
        item_id=item if item in icols else _first_present(icols, ("item_id", "id")),
        title=title,
        text=[c for c in icols if c not in (item, "item_id", title, item_domain)],
        item_domain=item_domain,
    )


def _table_domains(
    inter: pd.DataFrame,
    inter_items: pd.Series,
    items: pd.DataFrame,
    item_ids: pd.Series,
    mapping: ColumnMapping,
    default: str,
) -> tuple[pd.Series, pd.Series]:
    """(interaction domains, item domains): from their columns, else from each other, else ``default``."""
    if mapping.item_domain:
        item_dom = items[mapping.item_domain].fillna(default).astype(str).reset_index(drop=True)
    elif mapping.domain:
        doms = inter[mapping.domain].fillna(default).astype(str).to_numpy()
        first = pd.Series(doms, index=inter_items.to_numpy())
        item_dom = item_ids.map(first[~first.index.duplicated()]).fillna(default)
    else:
        item_dom = pd.Series(default, index=item_ids.index)
    if mapping.domain:
        inter_dom = inter[mapping.domain].fillna(default).astype(str).reset_index(drop=True)
    else:
        lookup = pd.Series(item_dom.to_numpy(), index=item_ids.to_numpy())
        inter_dom = inter_items.map(lookup[~lookup.index.duplicated()]).fillna(default)
    return inter_dom, item_dom


def load_tables(
    interactions: str | Path,
    items: str | Path,
    mapping: ColumnMapping | None = None,
    *,
    order_by: OrderBy | None = None,
    name: str | None = None,
    domain: str | None = None,
) -> RecDataset:
    """Any interactions + items table pair (CSV, TSV, optionally gzipped, or Parquet) with a column mapping.

    ``mapping`` defaults to :func:`infer_mapping` of the headers. ``order_by``
    defaults to ``"step"`` when the order column is named ``step`` (or there is
    none), else ``"timestamp"``. ``domain`` names the single domain of data
    without a domain column (default: the dataset name = the folder name).
    """
    ifile, tfile = Path(interactions), Path(items)
    inter_raw, items_raw = _read_any_table(ifile), _read_any_table(tfile)
    mapping = mapping or infer_mapping(list(inter_raw.columns), list(items_raw.columns))
    inter_cols = [c for c in (mapping.user, mapping.item, mapping.time, mapping.rating, mapping.domain) if c]
    _check_columns(inter_raw, inter_cols, ifile, _table_separator(ifile))
    _check_rows(inter_raw, ifile)
    item_cols = [c for c in (mapping.items_key, mapping.title, *mapping.text, mapping.item_domain) if c]
    _check_columns(items_raw, item_cols, tfile, _table_separator(tfile))
    _check_rows(items_raw, tfile)
    name = name or ifile.resolve().parent.name
    if order_by is None:
        order_by = "step" if mapping.time in (None, "step") else "timestamp"
    inter_items = _ids(inter_raw[mapping.item], ifile, mapping.item)
    item_ids = _ids(items_raw[mapping.items_key], tfile, mapping.items_key)
    inter_dom, item_dom = _table_domains(inter_raw, inter_items, items_raw, item_ids, mapping, domain or name)
    inter = _interactions(
        _ids(inter_raw[mapping.user], ifile, mapping.user),
        inter_items,
        _order_key(inter_raw[mapping.time], ifile, mapping.time)
        if mapping.time
        else np.arange(len(inter_raw)),
        _ratings(inter_raw[mapping.rating], ifile, mapping.rating) if mapping.rating else None,
        inter_dom,
    )
    items_frame = _items(
        item_ids,
        items_raw[mapping.title].reset_index(drop=True),
        _join_text([items_raw[c] for c in mapping.text], len(items_raw)),
        item_dom,
    )
    return _finish(
        name,
        inter,
        items_frame,
        order_by=order_by,
        source=str(ifile.parent) if ifile.parent == tfile.parent else f"{ifile} + {tfile}",
        inter_file=ifile,
        item_column=mapping.item,
    )


def _find_table(root: Path, stem: str) -> Path | None:
    return next((root / f"{stem}{s}" for s in TABLE_SUFFIXES if (root / f"{stem}{s}").is_file()), None)


def load_tables_folder(path: str | Path, **options: Any) -> RecDataset:
    """A folder with ``interactions`` and ``items`` tables (.csv, .tsv, .parquet; see :func:`load_tables`)."""
    root = _folder(path)
    inter, items = _find_table(root, "interactions"), _find_table(root, "items")
    if inter is None or items is None:
        missing = "interactions" if inter is None else "items"
        raise DataError(
            f"no {missing} table",
            file=str(root / f"{missing}.csv"),
            hint=f"accepted suffixes: {TABLE_SUFFIXES}",
        )
    options.setdefault("name", root.name)
    return load_tables(inter, items, **options)


# --------------------------------------------------------------------------- detection and entry point


def detect_format(path: str | Path) -> str:
    """The :data:`FORMATS` entry of a dataset folder, from the files it holds."""
    root = _folder(path)
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
        hint="expected ratings.csv+movies.csv, u.data+u.item, ratings.dat+movies.dat, "
        "interactions.csv+items.csv, NAME.inter+NAME.item, or X.jsonl+meta_X.jsonl; "
        f"or pass format= one of {FORMATS}",
    )


_LOADERS = {
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
    ``"tables"``). The dataset name is the folder name.
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
    options.setdefault("name", root.name)
    return _LOADERS[fmt](root, **options)
