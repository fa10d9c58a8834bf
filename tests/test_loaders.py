"""Loaders: every format is written from real rows of shared/data, loaded back and compared exactly."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.data import (
    ColumnMapping,
    clean,
    detect_format,
    load_amazon2023,
    load_dataset,
    load_movielens_1m,
    load_movielens_100k,
    load_recbole,
    load_tables,
)
from llmrec.data.loaders import ML100K_GENRES
from llmrec.errors import DataError, LlmrecWarning

N_RATINGS = 2000


# --------------------------------------------------------------------------- real rows, converted


@pytest.fixture(scope="module")
def ml_rows(ml_small_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """First ratings of ml-latest-small (as text) and the movies whose title latin-1 can encode."""
    ratings = pd.read_csv(ml_small_dir / "ratings.csv", dtype=str).head(N_RATINGS)
    movies = pd.read_csv(ml_small_dir / "movies.csv", dtype=str)
    movies = movies[[_latin1(t) for t in movies["title"]]].reset_index(drop=True)
    ratings = ratings[ratings["movieId"].isin(movies["movieId"])].reset_index(drop=True)
    return ratings, movies


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _genre_text(genres: pd.Series) -> list[str]:
    return [g.replace("(no genres listed)", "").replace("|", " ").strip() for g in genres]


def _ml100k_genres(genres: str) -> list[str]:
    """ml-latest-small genres in ml-100k spelling (IMAX has no ml-100k flag)."""
    rename = {"Children": "Children's", "(no genres listed)": "unknown"}
    return [rename.get(g, g) for g in genres.split("|") if g != "IMAX"]


def write_ml100k(root: Path, ratings: pd.DataFrame, movies: pd.DataFrame, with_genre_file: bool) -> Path:
    root.mkdir()
    lines = ratings[["userId", "movieId", "rating", "timestamp"]].agg("\t".join, axis=1)
    (root / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    rows = []
    for movie, title, genres in movies[["movieId", "title", "genres"]].itertuples(index=False):
        flags = ["1" if g in _ml100k_genres(genres) else "0" for g in ML100K_GENRES]
        rows.append("|".join([movie, title, "", "", "", *flags]))
    (root / "u.item").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    if with_genre_file:
        text = "".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n"
        (root / "u.genre").write_text(text, encoding="latin-1")
    return root


def write_ml1m(root: Path, ratings: pd.DataFrame, movies: pd.DataFrame) -> Path:
    root.mkdir()
    lines = ratings[["userId", "movieId", "rating", "timestamp"]].agg("::".join, axis=1)
    (root / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    lines = movies[["movieId", "title", "genres"]].agg("::".join, axis=1)
    (root / "movies.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return root


def write_movielens_csv(root: Path, ratings: pd.DataFrame, movies: pd.DataFrame) -> Path:
    root.mkdir()
    ratings.to_csv(root / "ratings.csv", index=False)
    movies.to_csv(root / "movies.csv", index=False)
    return root


def write_recbole(root: Path, ratings: pd.DataFrame, movies: pd.DataFrame, name: str) -> Path:
    root.mkdir()
    inter = ratings.rename(
        columns={
            "userId": "user_id:token",
            "movieId": "item_id:token",
            "rating": "rating:float",
            "timestamp": "timestamp:float",
        }
    )
    inter.to_csv(root / f"{name}.inter", sep="\t", index=False)
    items = pd.DataFrame(
        {
            "item_id:token": movies["movieId"],
            "movie_title:token_seq": movies["title"],
            "genre:token_seq": _genre_text(movies["genres"]),
        }
    )
    # RecBole reads atomic files without quoting: write them the same way.
    lines = ["\t".join(items.columns)] + ["\t".join(row) for row in items.itertuples(index=False)]
    (root / f"{name}.item").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _write_jsonl(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def write_amazon(root: Path, arts_office_dir: Path, n_rows: int = 20000) -> dict[str, pd.DataFrame]:
    """arts-office rows as Amazon 2023 files (step -> timestamp in ms); arts gzipped, office plain."""
    root.mkdir(exist_ok=True)
    inter = pd.read_csv(arts_office_dir / "interactions.csv", dtype=str).head(n_rows)
    items = pd.read_csv(arts_office_dir / "items.csv", dtype=str, keep_default_na=False)
    names = {"arts": ("Arts_Crafts_and_Sewing", ".jsonl.gz"), "office": ("Office_Products", ".jsonl")}
    out = {}
    for dom, (name, suffix) in names.items():
        rows = inter[inter["domain"] == dom]
        reviews = [
            {"user_id": u, "parent_asin": i, "timestamp": int(s) * 1000}
            for u, i, s in rows[["user_id", "item_id", "step"]].itertuples(index=False)
        ]
        _write_jsonl(root / f"{name}{suffix}", reviews)
        meta = items[items["domain"] == dom]
        records = [
            {"parent_asin": i, "title": t, "categories": [c], "store": None}
            for i, t, c in meta[["item_id", "title", "categories"]].itertuples(index=False)
        ]
        _write_jsonl(root / f"meta_{name}{suffix}", records)
        out[name] = (rows, meta)
    return out


def _frames(data):
    return data.interactions.to_pandas(), data.items.to_pandas()


def _check_movies(data, ratings: pd.DataFrame, movies: pd.DataFrame) -> None:
    inter, items = _frames(data)
    assert len(inter) == len(ratings)
    assert inter["user_id"].tolist() == ratings["userId"].tolist()
    assert inter["item_id"].tolist() == ratings["movieId"].tolist()
    assert inter["timestamp"].tolist() == ratings["timestamp"].astype(np.int64).tolist()
    np.testing.assert_array_equal(inter["rating"].to_numpy(), ratings["rating"].astype(np.float32).to_numpy())
    assert items["item_id"].tolist() == movies["movieId"].tolist()
    # Titles are stripped of surrounding blanks (one real title ends with a space).
    assert items["title"].tolist() == movies["title"].str.strip().tolist()
    assert set(inter["domain"]) == {"movies"} == set(items["domain"])


# --------------------------------------------------------------------------- each format


def test_embedded_ml_latest_small_matches_shared_copy(ml_small_dir):
    data = load_dataset("ml-latest-small")
    shared = load_dataset(ml_small_dir)
    assert data.name == "ml-latest-small" and data.order_by == "timestamp"
    assert len(data.interactions) == 100836 and len(data.items) == 9742
    assert data.interactions["item_id"] == shared.interactions["item_id"]
    assert data.log[0].startswith("loaded 100836 interactions (610 users, 9724 items)")


def test_movielens_csv_round_trip(tmp_path, ml_rows):
    ratings, movies = ml_rows
    root = write_movielens_csv(tmp_path / "ml-csv", ratings, movies)
    data = load_dataset(root)
    assert detect_format(root) == "movielens" and data.name == "ml-csv"
    _check_movies(data, ratings, movies)
    assert data.items["text"] == _genre_text(movies["genres"])


@pytest.mark.parametrize("with_genre_file", [True, False])
def test_ml100k_round_trip_latin1(tmp_path, ml_rows, with_genre_file):
    ratings, movies = ml_rows
    root = write_ml100k(tmp_path / "ml-100k", ratings, movies, with_genre_file)
    with pytest.raises(UnicodeDecodeError):
        (root / "u.item").read_text(encoding="utf-8")  # really latin-1, as the original
    data = load_dataset(root)
    assert detect_format(root) == "ml-100k" and data.name == "ml-100k"
    _check_movies(data, ratings, movies)
    titles = dict(zip(data.items["item_id"], data.items["title"], strict=True))
    assert "Misérables, Les (1995)" in titles.values()
    expected = [" ".join(g for g in _ml100k_genres(x) if g != "unknown") for x in movies["genres"]]
    assert data.items["text"] == expected
    assert load_movielens_100k(root).items["title"] == data.items["title"]


def test_ml1m_round_trip(tmp_path, ml_rows):
    ratings, movies = ml_rows
    root = write_ml1m(tmp_path / "ml-1m", ratings, movies)
    data = load_dataset(root)
    assert detect_format(root) == "ml-1m"
    _check_movies(data, ratings, movies)
    assert any(":" in t for t in data.items["title"])  # titles keep their colons
    assert data.items["text"] == _genre_text(movies["genres"])
    assert len(load_movielens_1m(root, name="x").interactions) == len(ratings)


def test_recbole_round_trip(tmp_path, ml_rows):
    ratings, movies = ml_rows
    root = write_recbole(tmp_path / "ml-rb", ratings, movies, name="ml-rb")
    data = load_dataset(root)
    assert detect_format(root) == "recbole" and data.order_by == "timestamp"
    inter, items = _frames(data)
    assert inter["user_id"].tolist() == ratings["userId"].tolist()
    assert inter["timestamp"].tolist() == ratings["timestamp"].astype(np.int64).tolist()
    assert items["title"].tolist() == movies["title"].str.strip().tolist()
    assert items["text"].tolist() == _genre_text(movies["genres"])
    assert set(inter["domain"]) == {"ml-rb"}


def test_recbole_without_timestamp_orders_by_row(tmp_path, ml_rows):
    ratings, movies = ml_rows
    root = write_recbole(tmp_path / "rb", ratings.drop(columns=["timestamp"]), movies, name="other")
    data = load_recbole(root, domain="movies")  # the only .inter file is found whatever its name
    assert data.order_by == "step"
    assert data.interactions["timestamp"] == list(range(len(ratings)))
    assert any("row order is the step" in line for line in data.log)


def test_amazon2023_round_trip(tmp_path, arts_office_dir):
    written = write_amazon(tmp_path / "amazon", arts_office_dir)
    for name, (rows, meta) in written.items():
        suffix = ".jsonl.gz" if name.startswith("Arts") else ".jsonl"
        data = load_amazon2023(
            tmp_path / "amazon" / f"{name}{suffix}", tmp_path / "amazon" / f"meta_{name}{suffix}"
        )
        inter, items = _frames(data)
        assert data.name == name and set(inter["domain"]) == {name} == set(items["domain"])
        assert inter["user_id"].tolist() == rows["user_id"].tolist()
        assert inter["item_id"].tolist() == rows["item_id"].tolist()
        assert inter["timestamp"].tolist() == [int(s) * 1000 for s in rows["step"]]
        assert inter["rating"].isna().all()
        assert items["item_id"].tolist() == meta["item_id"].tolist()
        assert items["title"].tolist() == meta["title"].str.strip().tolist()
        assert items["text"].tolist() == meta["categories"].tolist()


def test_amazon2023_folder_has_one_domain_per_file_pair(tmp_path, arts_office_dir):
    written = write_amazon(tmp_path / "amazon", arts_office_dir, n_rows=3000)
    data = load_dataset(tmp_path / "amazon")
    assert detect_format(tmp_path / "amazon") == "amazon2023" and data.name == "amazon"
    assert data.domains == sorted(written)
    assert len(data.interactions) == 3000
    assert len(data.items) == sum(len(meta) for _, meta in written.values())


def test_arts_office_folder_loads_as_tables(arts_office_dir):
    data = load_dataset(arts_office_dir)
    raw = pd.read_csv(arts_office_dir / "interactions.csv", dtype=str)
    items_raw = pd.read_csv(arts_office_dir / "items.csv", dtype=str, keep_default_na=False)
    inter, items = _frames(data)
    assert detect_format(arts_office_dir) == "tables"
    assert data.name == "amazon-arts-office" and data.order_by == "step"
    assert len(inter) == 208541 and inter["user_id"].nunique() == 9577
    assert len(items) == 38396 and data.domains == ["arts", "office"]
    assert inter["timestamp"].tolist() == raw["step"].astype(np.int64).tolist()
    assert inter["domain"].tolist() == raw["domain"].tolist()
    assert items["text"].tolist() == items_raw["categories"].tolist()
    assert items["domain"].value_counts().to_dict() == {"office": 19757, "arts": 18639}
    forced = load_dataset(arts_office_dir, format="tables")
    assert len(forced.interactions) == len(data.interactions)


def test_parquet_tables_with_column_mapping(tmp_path, ml_rows):
    ratings, movies = ml_rows
    inter = pd.DataFrame(
        {
            "who": ratings["userId"].astype(int),
            "what": ratings["movieId"].astype(int),
            "when": pd.to_datetime(ratings["timestamp"].astype(int), unit="s"),
            "stars": ratings["rating"].astype(float),
        }
    )
    inter.to_parquet(tmp_path / "events.parquet")
    movies.rename(columns={"movieId": "id", "title": "name"}).to_parquet(tmp_path / "catalog.parquet")
    mapping = ColumnMapping(user="who", item="what", time="when", rating="stars", item_id="id", title="name")
    mapping.text = ["genres"]
    data = load_tables(tmp_path / "events.parquet", tmp_path / "catalog.parquet", mapping, domain="film")
    got, items = _frames(data)
    assert got["user_id"].tolist() == ratings["userId"].tolist()
    assert got["item_id"].tolist() == ratings["movieId"].tolist()
    assert got["timestamp"].tolist() == ratings["timestamp"].astype(np.int64).tolist()
    assert items["title"].tolist() == movies["title"].str.strip().tolist()
    assert items["text"].tolist() == movies["genres"].tolist()
    assert data.order_by == "timestamp" and data.domains == ["film"]


# --------------------------------------------------------------------------- bad input: one clear DataError


@pytest.fixture()
def ml_csv(tmp_path, ml_rows) -> Path:
    return write_movielens_csv(tmp_path / "bad", *ml_rows)


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def test_missing_file(ml_csv):
    (ml_csv / "movies.csv").unlink()
    with pytest.raises(DataError, match="file not found") as err:
        load_dataset(ml_csv)
    assert err.value.file.endswith("movies.csv") and "ratings.csv" in str(err.value)


def test_missing_column(ml_csv):
    _edit(ml_csv / "ratings.csv", "userId,", "user,")
    with pytest.raises(DataError, match="missing column 'userId'") as err:
        load_dataset(ml_csv)
    assert err.value.column == "userId" and err.value.file.endswith("ratings.csv")
    assert "user" in str(err.value)


def test_wrong_separator(ml_csv):
    frame = pd.read_csv(ml_csv / "ratings.csv", dtype=str)
    frame.to_csv(ml_csv / "ratings.csv", sep=";", index=False)
    with pytest.raises(DataError, match="check the separator") as err:
        load_dataset(ml_csv)
    assert "semicolon" in str(err.value)
    assert err.value.value == "userId;movieId;rating;timestamp"


def test_wrong_separator_in_headerless_formats(tmp_path, ml_rows):
    root = write_ml100k(tmp_path / "ml-100k", *ml_rows, with_genre_file=False)
    _edit(root / "u.data", "\t", ",", count=-1)
    with pytest.raises(DataError, match="check the separator") as err:
        load_dataset(root)
    assert err.value.file.endswith("u.data") and "comma" in str(err.value)
    root = write_ml1m(tmp_path / "ml-1m", *ml_rows)
    (root / "ratings.dat").write_text((root / "ratings.dat").read_text().replace("::", "\t"))
    with pytest.raises(DataError, match="check the separator") as err:
        load_dataset(root)
    assert err.value.file.endswith("ratings.dat")


def test_empty_table(ml_csv):
    (ml_csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match="no rows") as err:
        load_dataset(ml_csv)
    assert err.value.file.endswith("ratings.csv")
    (ml_csv / "ratings.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_dataset(ml_csv)


def test_non_numeric_timestamp_names_first_bad_value(ml_csv):
    frame = pd.read_csv(ml_csv / "ratings.csv", dtype=str)
    frame.loc[10, "timestamp"] = "2000-07-30"
    frame.loc[20, "timestamp"] = "later"
    frame.to_csv(ml_csv / "ratings.csv", index=False)
    with pytest.raises(DataError, match="non-numeric timestamp at line 12") as err:
        load_dataset(ml_csv)
    assert err.value.column == "timestamp" and err.value.value == "2000-07-30"


def test_non_numeric_rating(ml_csv):
    frame = pd.read_csv(ml_csv / "ratings.csv", dtype=str)
    frame.loc[3, "rating"] = "four"
    frame.to_csv(ml_csv / "ratings.csv", index=False)
    with pytest.raises(DataError, match="non-numeric rating at line 5") as err:
        load_dataset(ml_csv)
    assert err.value.column == "rating" and err.value.value == "four"


def test_no_item_joins_the_catalog(ml_csv):
    movies = pd.read_csv(ml_csv / "movies.csv", dtype=str)
    movies["movieId"] = "m" + movies["movieId"]
    movies.to_csv(ml_csv / "movies.csv", index=False)
    with pytest.raises(DataError, match="no interaction item id joins") as err:
        load_dataset(ml_csv)
    assert err.value.column == "movieId" and err.value.value == "1"
    assert "'m1'" in str(err.value)


def test_some_items_do_not_join_are_dropped_by_clean_with_warning(ml_csv, ml_rows):
    ratings, movies = ml_rows
    gone = movies["movieId"].iloc[:3].tolist()
    movies[~movies["movieId"].isin(gone)].to_csv(ml_csv / "movies.csv", index=False)
    data = load_dataset(ml_csv)
    n_gone = int(ratings["movieId"].isin(gone).sum())
    assert any(f"{n_gone} interactions refer to 3 item ids absent" in line for line in data.log)
    with pytest.warns(LlmrecWarning, match=f"dropped {n_gone} interactions of 3 item ids"):
        cleaned = clean(data)
    assert not set(gone) & set(cleaned.interactions["item_id"])


def test_bad_jsonl(tmp_path, arts_office_dir):
    write_amazon(tmp_path / "amazon", arts_office_dir, n_rows=50)
    reviews, meta = (
        tmp_path / "amazon" / "Office_Products.jsonl",
        tmp_path / "amazon" / "meta_Office_Products.jsonl",
    )
    lines = reviews.read_text().splitlines()
    reviews.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    with pytest.raises(DataError, match="invalid JSON at line 3") as err:
        load_amazon2023(reviews, meta)
    assert err.value.file == str(reviews)
    with pytest.raises(DataError, match="lacks the field 'user_id'") as err:
        load_amazon2023(meta, meta)  # the meta file given as reviews
    assert err.value.column == "user_id" and "parent_asin" in str(err.value)


def test_bad_recbole_header(tmp_path, ml_rows):
    root = write_recbole(tmp_path / "rb", *ml_rows, name="rb")
    _edit(root / "rb.inter", "user_id:token", "user_id")
    with pytest.raises(DataError, match="name:type") as err:
        load_dataset(root)
    assert err.value.column == "user_id" and err.value.file.endswith("rb.inter")


def test_unknown_folder_and_format(tmp_path, ml_csv):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="unrecognized dataset folder"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="dataset not found"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match="expected a dataset folder, got a file"):
        load_dataset(ml_csv / "ratings.csv")
    with pytest.raises(DataError, match="unknown format 'ml-2m'"):
        load_dataset(ml_csv, format="ml-2m")
    with pytest.raises(DataError, match="file not found") as err:
        load_dataset(ml_csv, format="ml-1m")
    assert err.value.file.endswith("ratings.dat")


def test_format_detection_order_and_forced_format(tmp_path, ml_rows):
    ratings, movies = ml_rows
    root = write_movielens_csv(tmp_path / "both", ratings, movies)
    shutil.copy(root / "ratings.csv", root / "interactions.csv")
    shutil.copy(root / "movies.csv", root / "items.csv")
    assert detect_format(root) == "movielens"
    data = load_dataset(root, format="tables")  # userId/movieId headers are recognised
    inter, items = _frames(data)
    assert inter["item_id"].tolist() == ratings["movieId"].tolist()
    assert inter["rating"].tolist() == ratings["rating"].astype(float).tolist()
    assert items["title"].tolist() == movies["title"].str.strip().tolist()
    assert data.domains == ["both"]
