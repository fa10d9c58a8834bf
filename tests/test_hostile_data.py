"""Hostile inputs: hand-broken copies of real files give one clear error before any work starts.

Each test writes a few real rows (the embedded ml-latest-small, or Amazon-style JSON
Lines) to ``tmp_path``, breaks them the way a download or a user does, and checks that
loading raises :class:`~llmrec.errors.DataError` naming the file and the field, and
(for some) that ``llmrec data`` exits with code 2 and no traceback.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from llmrec.cli import app
from llmrec.data import load_dataset
from llmrec.data.loaders import EMBEDDED
from llmrec.data.schema import DATASET_META
from llmrec.data.split import leave_one_out
from llmrec.errors import ConfigError, DataError

ML_SMALL = EMBEDDED["ml-latest-small"]
N_ROWS = 300


def _ratings_lines() -> list[str]:
    """Header + the first ``N_ROWS`` rows of the embedded ratings.csv."""
    return (ML_SMALL / "ratings.csv").read_text(encoding="utf-8").splitlines()[: N_ROWS + 1]


def _movielens(folder: Path, lines: list[str]) -> Path:
    """A MovieLens CSV folder: ``lines`` as ratings.csv beside the real movies.csv."""
    folder.mkdir()
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "movies.csv").write_bytes((ML_SMALL / "movies.csv").read_bytes())
    return folder


def _tables(folder: Path, interactions: bytes, name: str = "interactions.csv.gz") -> Path:
    """A generic tables folder: ``interactions`` (raw bytes) as ``name`` + the real movies as items.csv."""
    folder.mkdir()
    (folder / name).write_bytes(interactions)
    movies = (ML_SMALL / "movies.csv").read_text(encoding="utf-8").replace("movieId", "item_id", 1)
    (folder / "items.csv").write_text(movies, encoding="utf-8")
    return folder


def _interactions_csv() -> bytes:
    lines = _ratings_lines()
    return ("user_id,item_id,rating,timestamp\n" + "\n".join(lines[1:]) + "\n").encode()


def _cli_data(folder: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["data", str(folder)])
    return result.exit_code, result.output


def _raises(folder: Path, *fragments: str) -> DataError:
    with pytest.raises(DataError) as caught:
        load_dataset(folder)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return caught.value


# --------------------------------------------------------------------------- compressed files


def test_truncated_csv_gz(tmp_path: Path) -> None:
    packed = gzip.compress(_interactions_csv())
    folder = _tables(tmp_path / "trunc", packed[: len(packed) // 2])
    _raises(folder, "truncated or corrupt gzip", "interactions.csv.gz", "re-download")
    code, output = _cli_data(folder)
    assert code == 2 and "truncated or corrupt gzip" in output and "Traceback" not in output


def test_corrupt_csv_gz(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(_interactions_csv()))
    packed[200:230] = bytes(30)
    folder = _tables(tmp_path / "corrupt", bytes(packed))
    _raises(folder, "truncated or corrupt gzip", "interactions.csv.gz")


def test_plain_text_named_gz(tmp_path: Path) -> None:
    folder = _tables(tmp_path / "plain", _interactions_csv())
    _raises(folder, "not gzip-compressed", "interactions.csv.gz", "rename it to interactions.csv")
    code, output = _cli_data(folder)
    assert code == 2 and "rename it to interactions.csv" in output and "Traceback" not in output


def test_gzip_named_csv(tmp_path: Path) -> None:
    folder = _tables(tmp_path / "gz", gzip.compress(_interactions_csv()), name="interactions.csv")
    _raises(folder, "gzip-compressed", "rename it to interactions.csv.gz")


def _amazon(folder: Path, reviews: bytes) -> Path:
    folder.mkdir()
    (folder / "Office_Products.jsonl.gz").write_bytes(reviews)
    meta = [{"parent_asin": f"B0{i:08d}", "title": f"Pen {i}", "store": "Acme"} for i in range(20)]
    (folder / "meta_Office_Products.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(m) + "\n" for m in meta).encode())
    )
    return folder


def _reviews(n: int = 200) -> bytes:
    rows = [
        {
            "rating": float(1 + i % 5),
            "title": "Works",
            "text": "Writes well.",
            "parent_asin": f"B0{i % 20:08d}",
            "user_id": f"AE{i % 17:06d}",
            "timestamp": 1588687728923 + 1000 * i,
            "helpful_vote": 0,
            "verified_purchase": True,
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_truncated_jsonl_gz(tmp_path: Path) -> None:
    packed = gzip.compress(_reviews())
    folder = _amazon(tmp_path / "amazon", packed[: len(packed) - 40])
    _raises(folder, "truncated or corrupt gzip", "Office_Products.jsonl.gz")
    code, output = _cli_data(folder)
    assert code == 2 and "Office_Products.jsonl.gz" in output and "Traceback" not in output


def test_plain_jsonl_named_gz(tmp_path: Path) -> None:
    folder = _amazon(tmp_path / "amazon", _reviews())
    _raises(folder, "not gzip-compressed", "rename it to Office_Products.jsonl")


# --------------------------------------------------------------------------- ratings


def _swap_rating_and_timestamp(lines: list[str]) -> list[str]:
    """Data rows with the rating and timestamp columns swapped (the header kept)."""
    rows = [line.split(",") for line in lines[1:]]
    return [lines[0], *(",".join([u, m, t, r]) for u, m, r, t in rows)]


def test_timestamp_read_as_rating(tmp_path: Path) -> None:
    folder = _movielens(tmp_path / "swapped", _swap_rating_and_timestamp(_ratings_lines()))
    err = _raises(folder, "plausible range", "ratings.csv", "column order/mapping")
    assert err.column == "rating" and float(err.value) > 1e8
    code, output = _cli_data(folder)
    assert code == 2 and "'rating'" in output and "Traceback" not in output


@pytest.mark.parametrize("value", ["inf", "-inf", "-1", "101", "nan"])
def test_implausible_rating(tmp_path: Path, value: str) -> None:
    lines = _ratings_lines()
    user, movie, _, stamp = lines[5].split(",")
    lines[5] = ",".join([user, movie, value, stamp])
    err = _raises(_movielens(tmp_path / "bad", lines), "ratings.csv", "line 6")
    assert err.column == "rating" and err.value == value


def test_amazon_rating_out_of_range(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in _reviews().decode().splitlines()]
    rows[3]["rating"], rows[3]["timestamp"] = rows[3]["timestamp"], 5.0
    reviews = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    err = _raises(_amazon(tmp_path / "amazon", reviews), "Office_Products.jsonl.gz", "plausible range")
    assert err.column == "rating"


def test_missing_rating_is_allowed(tmp_path: Path) -> None:
    lines = _ratings_lines()
    user, movie, _, stamp = lines[5].split(",")
    lines[5] = ",".join([user, movie, "", stamp])
    data = load_dataset(_movielens(tmp_path / "blank", lines))
    assert len(data.interactions) == N_ROWS


# --------------------------------------------------------------------------- split order


def _ml100k(folder: Path, n_users: int = 40) -> pd.DataFrame:
    """An ml-100k folder (``u.data`` tab-separated, ``u.item`` pipe-separated latin-1) from real rows.

    The last two ratings of user 1 share a second and ids of different digit counts
    (99 and 1009, as in ml-100k); returns the ratings written, as numbers.
    """
    folder.mkdir()
    ratings = pd.read_csv(ML_SMALL / "ratings.csv")
    ratings = ratings[ratings["userId"] <= n_users].copy()
    ratings["timestamp"] = ratings["timestamp"].astype("int64")
    last = int(ratings["timestamp"].max()) + 1
    tie = pd.DataFrame(
        {"userId": [1, 1], "movieId": [1009, 99], "rating": [4.0, 3.0], "timestamp": [last] * 2}
    )
    ratings = pd.concat([ratings[~ratings["movieId"].isin([99, 1009])], tie], ignore_index=True)
    movies = pd.read_csv(ML_SMALL / "movies.csv")
    movies = movies[movies["movieId"].isin(set(ratings["movieId"]) | {99, 1009})]
    rows = [f"{u}\t{m}\t{int(r)}\t{t}" for u, m, r, t in ratings.itertuples(index=False)]
    (folder / "u.data").write_text("\n".join(rows) + "\n", encoding="latin-1")
    flags = "|".join(["0"] * 18 + ["1"])
    items = [
        f"{m}|{t.encode('latin-1', 'replace').decode('latin-1')}|01-Jan-1995||http://us.imdb.com/|{flags}"
        for m, t in zip(movies["movieId"], movies["title"], strict=True)
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    return ratings


def test_ml100k_ties_break_by_numeric_item_id(tmp_path: Path) -> None:
    ratings = _ml100k(tmp_path / "ml-100k")
    split = leave_one_out(load_dataset(tmp_path / "ml-100k"), order="time+id")
    expected = ratings.sort_values(["userId", "timestamp", "movieId"], kind="stable").groupby("userId")
    ids = split.catalog.item_ids
    by_user = dict(zip(split.user_ids.tolist(), range(split.n_users), strict=True))
    for user, rows in expected:
        u = by_user[str(user)]
        assert ids[split.test[u]] == str(rows["movieId"].iloc[-1])
        assert ids[split.valid[u]] == str(rows["movieId"].iloc[-2])
    assert ids[split.test[by_user["1"]]] == "1009"
    text = leave_one_out(load_dataset(tmp_path / "ml-100k"), order="time+text")
    assert ids[text.test[by_user["1"]]] == "99"
    in_file = leave_one_out(load_dataset(tmp_path / "ml-100k"), order="file")
    assert ids[in_file.test[by_user["1"]]] == "99"  # written after 1009


def test_unknown_split_order(tmp_path: Path) -> None:
    _ml100k(tmp_path / "ml-100k", n_users=3)
    with pytest.raises(ConfigError, match="order"):
        leave_one_out(load_dataset(tmp_path / "ml-100k"), order="id")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- RecBole benchmark folders


def _sequences(n_users: int = 8) -> dict[str, list[str]]:
    """Real per-user item sequences (ml-latest-small, time order), as RecBole tokens."""
    ratings = pd.read_csv(ML_SMALL / "ratings.csv", dtype=str)
    ratings = ratings[ratings["userId"].astype(int) <= n_users]
    ratings = ratings.sort_values(["userId", "timestamp"], key=lambda c: c.astype(int), kind="stable")
    return {u: rows["movieId"].tolist()[:30] for u, rows in ratings.groupby("userId", sort=False)}


def _write_atomic(path: Path, header: list[str], rows: list[list[str]]) -> None:
    lines = ["\t".join(header), *("\t".join(r) for r in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _benchmark(folder: Path, seqs: dict[str, list[str]], sequential: bool = True) -> Path:
    """A RecBole benchmark folder: NAME.{train,valid,test}.inter (leave-one-out) + NAME.item.

    ``sequential``: rows ``session_id item_id_list item_id`` with augmented train
    prefixes (as RecBole's sequential benchmarks); else ``user_id item_id`` rows.
    """
    folder.mkdir()
    name = folder.name
    for part, end in (("train", -2), ("valid", -1), ("test", None)):
        rows: list[list[str]] = []
        for user, seq in seqs.items():
            seq = seq[:end]
            targets = range(1, len(seq)) if part == "train" else [len(seq) - 1]
            for t in targets:
                rows.append(
                    [user, " ".join(seq[max(0, t - 10) : t]), seq[t]] if sequential else [user, seq[t]]
                )
        if not sequential and part == "train":
            rows = [[user, seq[0]] for user, seq in seqs.items()] + rows
        header = ["session_id:token", "item_id_list:token_seq", "item_id:token"]
        _write_atomic(
            folder / f"{name}.{part}.inter",
            header if sequential else ["user_id:token", "item_id:token"],
            rows,
        )
    movies = pd.read_csv(ML_SMALL / "movies.csv", dtype=str)
    items = [[m, t, g.replace("|", " ")] for m, t, g in movies.itertuples(index=False)]
    _write_atomic(
        folder / f"{name}.item", ["item_id:token", "movie_title:token_seq", "genre:token_seq"], items
    )
    return folder


@pytest.mark.parametrize("sequential", [True, False])
def test_recbole_benchmark_split_is_reproduced(tmp_path: Path, sequential: bool) -> None:
    seqs = _sequences()
    data = load_dataset(_benchmark(tmp_path / "ml-bench", seqs, sequential))
    assert data.order_by == "step" and len(data.interactions) == sum(len(s) for s in seqs.values())
    split = leave_one_out(data)
    ids = split.catalog.item_ids
    for u, user in enumerate(split.user_ids.tolist()):
        assert ids[split.test[u]] == seqs[user][-1] and ids[split.valid[u]] == seqs[user][-2]
        assert ids[split.train[u]].tolist() == seqs[user][:-2]


def test_recbole_ratio_split_is_refused(tmp_path: Path) -> None:
    seqs = _sequences()
    folder = _benchmark(tmp_path / "ml-bench", seqs, sequential=False)
    test = folder / "ml-bench.test.inter"
    user, first = next(iter(seqs.items()))
    test.write_text(test.read_text() + f"{user}\t{first[0]}\n")
    err = _raises(folder, "not a leave-one-out split", "ml-bench.test.inter", "ml-bench.inter")
    assert err.column == "user_id" and err.value == user
    code, output = _cli_data(folder)
    assert code == 2 and "not a leave-one-out split" in output and "Traceback" not in output


def test_recbole_incomplete_benchmark(tmp_path: Path) -> None:
    folder = _benchmark(tmp_path / "ml-bench", _sequences())
    (folder / "ml-bench.valid.inter").unlink()
    _raises(folder, "ml-bench.train.inter", "ml-bench.test.inter", "NAME.valid.inter")


def test_recbole_history_from_another_run(tmp_path: Path) -> None:
    seqs = _sequences()
    folder = _benchmark(tmp_path / "ml-bench", seqs)
    test = folder / "ml-bench.test.inter"
    lines = test.read_text().splitlines()
    user, history, item = lines[1].split("\t")
    lines[1] = "\t".join([user, history + " 1", item])
    test.write_text("\n".join(lines) + "\n")
    err = _raises(folder, "ml-bench.test.inter", "does not end with")
    assert err.column == "item_id_list"


# --------------------------------------------------------------------------- saved datasets


def test_damaged_saved_dataset(tmp_path: Path) -> None:
    folder = load_dataset(_movielens(tmp_path / "ml", _ratings_lines())).save(tmp_path / "saved")
    (folder / DATASET_META).write_text('{"name": "ml", "order_by"', encoding="utf-8")
    _raises(folder, "cannot read the saved dataset", "saved", "--save")
    code, output = _cli_data(folder)
    assert code == 2 and "cannot read the saved dataset" in output and "Traceback" not in output
