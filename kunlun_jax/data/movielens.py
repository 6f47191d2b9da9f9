"""MovieLens rating logs (100K, 1M, latest-small) as ranking examples in the `spec` batch format.

Protocol (CTR, as in BARS' MovieLens setups):

* every rating is one example; label = rating >= 4 stars (4.0 for latest-small's half stars);
* split by time with one global cut: events are sorted by (timestamp, file order), and the
  timestamps at the 80% and 90% quantiles t80 <= t90 cut them into train (ts < t80),
  eval (t80 <= ts < t90) and test (ts >= t90). Equal timestamps stay in one split, so every
  train event is strictly older than every eval event, and every eval event than every test one;
* vocabularies come from the train split only: id 0 = padding (sequences) or a missing value,
  1 = OOV (a user, item or value unseen in train), 2.. = train values in sorted order;
* sparse features: user_id, and for 100K/1M the demographics age (ML-1M's buckets 1, 18, 25, 35,
  45, 50, 56; ML-100K ages are bucketed the same way), gender, occupation, zip_prefix (first 2
  characters); then the candidate's item_id, genre (its first listed genre) and year (release
  decade, clipped to 1920..2010, from the release date or the title's "(1995)");
* dense features: the candidate's genre multi-hot (19 / 18 / 20 floats), then log(1 + n) and the
  like rate (likes + 1) / (n + 2) of the user's and of the candidate item's earlier ratings
  (HISTORY_FEATURES);
* two event streams per example, the user's earlier ratings with rating >= 4 ("liked") and the
  rest ("other"): item = the item's id in the candidate's item_id vocabulary, side = its genre
  id, dt = example ts - event ts in seconds, newest first, at most `max_len` (default 50).

"Earlier" always means a strictly smaller timestamp: events in the same second as the example
(MovieLens users often rate several movies in one second) are neither in its histories nor in its
counts, and neither is the example itself, so nothing from its own time or later leaks in.

Storage (`records`): `prepare` parses the raw files once into O(N) arrays, events in time order
plus user and item tables of vocabulary ids. `MovieLensSource` groups each stream's events by user
(and item) in a CSR layout at load time and cuts every history out of it on the fly with binary
searches, vectorized over a batch.

Licences: ML-100K and ML-1M may not be redistributed (keep them outside the repo, pass their
directory); ml-latest-small may be, with its README. `download` fetches the GroupLens zips.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import io
import os
import re
import shutil
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kunlun_jax.data import records
from kunlun_jax.data.jagged import newest_first_positions
from kunlun_jax.data.spec import Batch, FeatureSpec, StreamSpec, task_columns
from kunlun_jax.data.validate import (
    DataError,
    OnError,
    Report,
    RowError,
    read_table,
    to_float,
    to_int,
)

DEFAULT_MAX_LEN = 50
SPLITS = ("train", "eval", "test")
SPLIT_QUANTILES = (0.8, 0.9)  # timestamp quantiles where eval and test begin
STREAMS = ("liked", "other")
LIKE_HALF_STARS = 8  # label = rating >= 4 stars; ratings are stored as half stars (2 x stars)
# The labels a model can predict (data.tasks): the rating at or above this many half stars.
TASK_HALF_STARS = {"like": LIKE_HALF_STARS, "love": 10}
DEFAULT_TASKS = ("like",)
PAD, OOV = 0, 1  # reserved ids of every vocabulary; train values start at 2
USER_FEATURES = ("age", "gender", "occupation", "zip_prefix")  # 100K and 1M only
ITEM_FEATURES = ("item_id", "genre", "year")
HISTORY_FEATURES = ("log1p_user_count", "user_like_rate", "log1p_item_count", "item_like_rate")
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M's age codes: under 18, 18-24, ..., 56+
DECADES = (1920, 2010)  # release decades are clipped to this range

_GENRES_1M = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
_GENRES_LATEST = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western", "(no genres listed)",
)  # fmt: skip
_ITEM_COLUMNS_100K = ("movie_id", "title", "release_date", "video_release_date", "imdb_url")
_TITLE_YEAR = re.compile(r"\((\d{4})[^()]*\)\s*$")  # "Toy Story (1995)", "Show (2006–2007)"
_RELEASE_DATE = re.compile(r"\d{1,2}-[A-Za-z]{3}-(\d{4})")  # ML-100K: "01-Jan-1995"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where a MovieLens release keeps its files, and how to recognize and fetch it."""

    title: str
    ratings: str
    ratings_columns: tuple[str, ...]
    items: str
    items_columns: tuple[str, ...]
    users: str | None  # None: no demographics (latest-small)
    users_columns: tuple[str, ...]
    ratings_sep: str
    table_sep: str  # of the item and user tables
    header: bool  # CSV files with a header row
    encoding: str  # of the item (title) and user tables; ratings are ASCII
    genres: tuple[str, ...]
    half_stars: bool  # ratings in 0.5 steps ("4.0") rather than whole stars ("4")
    expected_rows: int | None  # rating rows of the release; None for a changing release
    url: str
    md5: str | None  # of the zip, as GroupLens publishes it; None for a changing release
    archive_dir: str  # the directory the zip unpacks to


DATASETS: dict[str, Dataset] = {
    "movielens-100k": Dataset(
        title="ML-100K",
        ratings="u.data",
        ratings_columns=("user_id", "item_id", "rating", "timestamp"),
        items="u.item",
        items_columns=(*_ITEM_COLUMNS_100K, "unknown", *_GENRES_1M),
        users="u.user",
        users_columns=("user_id", "age", "gender", "occupation", "zip_code"),
        ratings_sep="\t",
        table_sep="|",
        header=False,
        encoding="latin-1",
        genres=("unknown", *_GENRES_1M),
        half_stars=False,
        expected_rows=100_000,
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        archive_dir="ml-100k",
    ),
    "movielens-1m": Dataset(
        title="ML-1M",
        ratings="ratings.dat",
        ratings_columns=("UserID", "MovieID", "Rating", "Timestamp"),
        items="movies.dat",
        items_columns=("MovieID", "Title", "Genres"),
        users="users.dat",
        users_columns=("UserID", "Gender", "Age", "Occupation", "Zip-code"),
        ratings_sep="::",
        table_sep="::",
        header=False,
        encoding="latin-1",
        genres=_GENRES_1M,
        half_stars=False,
        expected_rows=1_000_209,
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        archive_dir="ml-1m",
    ),
    "movielens-latest-small": Dataset(
        title="ml-latest-small",
        ratings="ratings.csv",
        ratings_columns=("userId", "movieId", "rating", "timestamp"),
        items="movies.csv",
        items_columns=("movieId", "title", "genres"),
        users=None,
        users_columns=(),
        ratings_sep=",",
        table_sep=",",
        header=True,
        encoding="utf-8",
        genres=_GENRES_LATEST,
        half_stars=True,
        expected_rows=None,  # a development set that GroupLens rebuilds
        url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        md5=None,
        archive_dir="ml-latest-small",
    ),
}


def dataset(name: str) -> Dataset:
    """The Dataset called `name` (a key of DATASETS); ValueError naming the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; choose one of {list(DATASETS)}")
    return DATASETS[name]


# ---------------------------------------------------------------------------------------------
# Raw files.


@dataclasses.dataclass(frozen=True)
class UserTable:
    """Users of a side table, U rows in file order."""

    raw: np.ndarray  # int64 [U] user ids as in the files
    attrs: dict[str, list[Any]]  # USER_FEATURES -> [U] values (None = missing); {} if none


@dataclasses.dataclass(frozen=True)
class ItemTable:
    """Items of a side table, I rows in file order; G = len(Dataset.genres)."""

    raw: np.ndarray  # int64 [I] item ids as in the files
    genre: list[str | None]  # [I] first listed genre
    year: list[int | None]  # [I] release decade (1990 for 1995), clipped to DECADES
    genres: np.ndarray  # uint8 [I, G] genre multi-hot


def _decade(year: int) -> int:
    return min(max(year // 10 * 10, DECADES[0]), DECADES[1])


def _title_year(title: str) -> int | None:
    match = _TITLE_YEAR.search(title)
    return _decade(int(match.group(1))) if match else None


def _zip_prefix(text: str) -> str | None:
    text = text.strip().upper()
    return text[:2] if text else None


def _gender(text: str, field: str) -> str:
    if text not in ("M", "F"):
        raise RowError(field, f"{text!r} is not M or F", "not in the valid set")
    return text


def _check_new(seen: set[int], key: int, field: str) -> None:
    if key in seen:
        raise RowError(field, f"id {key} appears twice", "duplicate id")
    seen.add(key)


def read_users(name: str, src: Path, report: Report | None = None) -> UserTable:
    """The user table (u.user / users.dat) of a 100K / 1M directory `src`.

    Rows with an invalid field raise a DataError naming file, line and field, or are skipped
    and counted in `report` if it was made with on_error="skip".
    """
    ds = dataset(name)
    if ds.users is None:
        raise ValueError(f"{name} has no user table")
    report = report or Report()
    path = Path(src) / ds.users
    cols = ds.users_columns
    raw: list[int] = []
    attrs: dict[str, list[Any]] = {f: [] for f in USER_FEATURES}
    seen: set[int] = set()
    for line, f in read_table(path, cols, sep=ds.table_sep, encoding=ds.encoding, report=report):
        try:
            user = to_int(f[0], cols[0], lo=1)
            if name == "movielens-100k":
                age_years = to_int(f[1], cols[1], lo=1, hi=120)
                age = AGE_BUCKETS[bisect.bisect_right(AGE_BUCKETS, age_years) - 1]
                gender = _gender(f[2], cols[2])
                occupation: str | int = f[3].strip()
                if not occupation:
                    raise RowError(cols[3], "is empty", "missing value")
            else:
                gender = _gender(f[1], cols[1])
                age = to_int(f[2], cols[2])
                if age not in AGE_BUCKETS:
                    raise RowError(
                        cols[2], f"{age} is not one of {AGE_BUCKETS}", "not in the valid set"
                    )
                occupation = to_int(f[3], cols[3], lo=0, hi=20)
            _check_new(seen, user, cols[0])
        except RowError as e:
            report.reject(path, line, e)
            continue
        raw.append(user)
        for key, value in zip(
            USER_FEATURES, (age, gender, occupation, _zip_prefix(f[4])), strict=True
        ):
            attrs[key].append(value)
    return UserTable(np.array(raw, np.int64), attrs)


def read_items(name: str, src: Path, report: Report | None = None) -> ItemTable:
    """The item table (u.item / movies.dat / movies.csv) of a raw directory `src`.

    Rows with an invalid field (id, release date, genre flag or name) raise a DataError naming
    file, line and field, or are skipped and counted in `report` (on_error="skip").
    """
    ds = dataset(name)
    report = report or Report()
    path = Path(src) / ds.items
    cols = ds.items_columns
    genre_index = {g: k for k, g in enumerate(ds.genres)}
    raw: list[int] = []
    first: list[str | None] = []
    years: list[int | None] = []
    multi_hot: list[list[int]] = []
    seen: set[int] = set()
    rows = read_table(
        path, cols, sep=ds.table_sep, encoding=ds.encoding, header=ds.header, report=report
    )
    for line, f in rows:
        try:
            item = to_int(f[0], cols[0], lo=1)
            if name == "movielens-100k":
                flags = [to_int(v, cols[5 + k], lo=0, hi=1) for k, v in enumerate(f[5:])]
                names = [g for g, v in zip(ds.genres, flags, strict=True) if v]
                date = f[2].strip()
                match = _RELEASE_DATE.fullmatch(date)
                if date and not match:
                    raise RowError(cols[2], f"{date!r} is not a dd-Mon-yyyy date", "bad date")
                year = _decade(int(match.group(1))) if match else None
            else:
                names = f[2].split("|")
                unknown = [g for g in names if g not in genre_index]
                if unknown:
                    raise RowError(cols[2], f"unknown genre {unknown[0]!r}", "unknown genre")
                year = _title_year(f[1])
            _check_new(seen, item, cols[0])
        except RowError as e:
            report.reject(path, line, e)
            continue
        raw.append(item)
        first.append(names[0] if names else None)
        years.append(year)
        hot = [0] * len(ds.genres)
        for g in names:
            hot[genre_index[g]] = 1
        multi_hot.append(hot)
    genres = np.array(multi_hot, np.uint8).reshape(len(raw), len(ds.genres))
    return ItemTable(np.array(raw, np.int64), first, years, genres)


@dataclasses.dataclass(frozen=True)
class _Ratings:
    """Valid rating rows in file order (N of them) and how many rows were read in all."""

    user: np.ndarray  # int64 [N] raw user ids
    item: np.ndarray  # int32 [N] rows of the ItemTable
    half_stars: np.ndarray  # int8 [N] rating x 2, in 1..10
    ts: np.ndarray  # int64 [N] unix seconds
    rows: int  # data rows read, including skipped ones


def _rating_parser(ds: Dataset, field: str) -> Callable[[str], int]:
    """text -> half stars (1..10) for this release's rating format; RowError otherwise."""
    if ds.half_stars:
        valid = "0.5, 1.0, ..., 5.0"

        def parse(text: str) -> int:
            half = 2 * to_float(text, field)
            if half != int(half) or not 1 <= half <= 10:
                raise RowError(field, f"{text!r} is not one of {valid}", "not in the valid set")
            return int(half)

    else:

        def parse(text: str) -> int:
            stars = to_int(text, field)
            if not 1 <= stars <= 5:
                raise RowError(field, f"{text!r} is not one of 1..5", "not in the valid set")
            return 2 * stars

    return parse


def _read_ratings_fast(
    ds: Dataset, path: Path, users: np.ndarray | None, items: ItemTable, max_rows: int | None
) -> _Ratings | None:
    """The ratings file parsed by numpy's C reader (~10x faster than row by row), or None if
    any row is unusual (wrong header or field count, blank line, quotes, a value that fails a
    check): then the row-by-row reader, which names the bad file, line and field, takes over."""
    if not path.is_file():
        return None
    raw = path.read_bytes()
    if ds.header:
        head, _, raw = raw.partition(b"\n")
        if head.rstrip(b"\r").decode("ascii", "replace").split(",") != list(ds.ratings_columns):
            return None
    if max_rows is not None:
        lines = raw.split(b"\n", max_rows)
        if len(lines) > max_rows:
            raw = b"\n".join(lines[:max_rows]) + b"\n"
    if not raw.strip():
        return None
    n_lines = raw.count(b"\n") + (not raw.endswith(b"\n"))
    sep = ds.ratings_sep
    if len(sep) > 1:  # loadtxt takes a one-character separator
        raw, sep = raw.replace(sep.encode(), b"\x1f"), "\x1f"
    rating_type = "<f8" if ds.half_stars else "<i8"
    dtype = [("user", "<i8"), ("item", "<i8"), ("rating", rating_type), ("ts", "<i8")]
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=sep, dtype=dtype, comments=None, ndmin=1)
    except ValueError:
        return None
    half = 2 * table["rating"]
    sorter = np.argsort(items.raw)
    at = sorter[
        np.minimum(np.searchsorted(items.raw, table["item"], sorter=sorter), len(sorter) - 1)
    ]
    ok = (
        len(table) == n_lines > 0
        and np.all(table["user"] >= 1)
        and (users is None or np.all(np.isin(table["user"], users)))
        and np.all(items.raw[at] == table["item"])
        and np.all((half == np.round(half)) & (half >= 1) & (half <= 10))
        and np.all(table["ts"] >= 0)
    )
    if not ok:
        return None
    return _Ratings(
        user=table["user"],
        item=at.astype(np.int32),
        half_stars=half.astype(np.int8),
        ts=table["ts"],
        rows=len(table),
    )


def _read_ratings(
    name: str,
    src: Path,
    users: np.ndarray | None,
    items: ItemTable,
    report: Report,
    max_rows: int | None,
) -> _Ratings:
    """The ratings file; every rating must name a user of `users` (if given) and a known item."""
    ds = dataset(name)
    path = src / ds.ratings
    fast = _read_ratings_fast(ds, path, users, items, max_rows)
    if fast is not None:
        return fast
    cols = ds.ratings_columns
    item_row = {int(i): k for k, i in enumerate(items.raw)}
    known = None if users is None else set(users.tolist())
    rating = _rating_parser(ds, cols[2])
    out: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
    rows = read_table(
        path, cols, sep=ds.ratings_sep, header=ds.header, max_rows=max_rows, report=report
    )
    for line, f in rows:
        try:
            user = to_int(f[0], cols[0], lo=1)
            item = to_int(f[1], cols[1], lo=1)
            half = rating(f[2])
            ts = to_int(f[3], cols[3], lo=0)
            if known is not None and user not in known:
                raise RowError(cols[0], f"user {user} is not in {ds.users}", "unknown user")
            if item not in item_row:
                raise RowError(cols[1], f"item {item} is not in {ds.items}", "unknown item")
        except RowError as e:
            report.reject(path, line, e)
            continue
        for column, value in zip(out, (user, item_row[item], half, ts), strict=True):
            column.append(value)
    n_skipped = sum(report.skipped.get(path.name, {}).values())
    return _Ratings(
        user=np.array(out[0], np.int64),
        item=np.array(out[1], np.int32),
        half_stars=np.array(out[2], np.int8),
        ts=np.array(out[3], np.int64),
        rows=len(out[0]) + n_skipped,
    )


# ---------------------------------------------------------------------------------------------
# Preparing: raw files -> arrays + manifest.


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared dataset in memory. N events, U users, I items, G genres, A = user features.

    arrays:
      event_user        int32 [N]    row of user_table; events sorted by (ts, file order)
      event_item        int32 [N]    row of item_table
      event_half_stars  int8  [N]    rating x 2 (1..10); label = event_half_stars >= 8
      event_ts          int64 [N]    unix seconds, non-decreasing
      user_raw          int64 [U]    user ids as in the files
      user_table        int32 [U, A] vocabulary ids of user_id (+ USER_FEATURES for 100K/1M)
      item_raw          int64 [I]    item ids as in the files
      item_table        int32 [I, 3] vocabulary ids of ITEM_FEATURES
      item_genres       uint8 [I, G] genre multi-hot
    manifest: counts, split bounds, vocabularies, base rates, source checksums (see `build`).
    """

    arrays: dict[str, np.ndarray]
    manifest: dict[str, Any]


def _vocab(values: Sequence[Any]) -> list[Any]:
    """Sorted distinct non-missing values."""
    return sorted({v for v in values if v is not None})


def _lookup(values: Sequence[Any], vocab: Sequence[Any]) -> np.ndarray:
    """int32 ids [len(values)]: 2 + position in `vocab`, OOV for others, PAD for None."""
    index = {v: k + 2 for k, v in enumerate(vocab)}
    return np.array([PAD if v is None else index.get(v, OOV) for v in values], np.int32)


def build(
    name: str, src: Path, *, max_rows: int | None = None, on_error: OnError = "raise"
) -> Prepared:
    """Parses the raw files of MovieLens `name` in directory `src` into a Prepared dataset.

    max_rows: read only the first rows of the ratings file (the full-release row-count check is
    then skipped). on_error: "raise" stops at the first invalid row with a DataError naming
    file, line and field; "skip" drops invalid rows, warns and counts them in the manifest
    ("rows_skipped"). Raises FileNotFoundError for missing files (with how to get them).
    """
    ds = dataset(name)
    src = Path(src)
    ratings_path = src / ds.ratings
    if not ratings_path.is_file():
        raise FileNotFoundError(
            f"{ratings_path} not found. {ds.title} ratings are not in the repo"
            + (" (they may not be redistributed)" if ds.md5 else "")
            + f"; get them with `kunlun-jax data download {name} <dir>` (needs internet), "
            f"then use <dir>/{ds.archive_dir}"
        )
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    report = Report(on_error)
    items = read_items(name, src, report)
    users = read_users(name, src, report) if ds.users else None
    ratings = _read_ratings(
        name, src, None if users is None else users.raw, items, report, max_rows
    )
    if max_rows is None and ds.expected_rows and ratings.rows != ds.expected_rows:
        raise DataError(
            f"{ratings_path} has {ratings.rows:,} rating rows; the {ds.title} release has "
            f"{ds.expected_rows:,}: the file is truncated or modified. Get it again with "
            f"`kunlun-jax data download {name} <dir>` (or pass max_rows to read a prefix)"
        )
    if len(ratings.ts) == 0:
        raise DataError(f"{ratings_path} has no valid ratings ({report.total} rows skipped)")
    if report.total:
        first = "; ".join(report.first.values())
        warnings.warn(
            f"{name}: skipped {report.total} invalid rows {report.skipped}; first: {first}",
            stacklevel=2,
        )
    if users is None:
        raw_users, user_of = np.unique(ratings.user, return_inverse=True)
        users = UserTable(raw_users, {})
    else:
        sorter = np.argsort(users.raw)
        user_of = sorter[np.searchsorted(users.raw, ratings.user, sorter=sorter)]

    order = np.argsort(ratings.ts, kind="stable")
    ts = ratings.ts[order]
    event_user = user_of[order].astype(np.int32)
    event_item = ratings.item[order]
    half_stars = ratings.half_stars[order]
    n = len(ts)
    cuts = [int(np.searchsorted(ts, ts[int(q * n)], "left")) for q in SPLIT_QUANTILES]
    bounds = [0, *cuts, n]
    sizes = {s: bounds[k + 1] - bounds[k] for k, s in enumerate(SPLITS)}
    if min(sizes.values()) == 0:
        raise DataError(
            f"{ratings_path}: {n} ratings with {len(np.unique(ts))} distinct timestamps cannot be "
            f"cut by time into non-empty train/eval/test splits ({sizes}); use more rows"
        )

    train_users = np.unique(event_user[: cuts[0]])
    train_items = np.unique(event_item[: cuts[0]])
    vocabs: dict[str, list[Any]] = {
        "user_id": users.raw[train_users].tolist(),
        **{f: _vocab([v[u] for u in train_users]) for f, v in users.attrs.items()},
        "item_id": items.raw[train_items].tolist(),
        "genre": _vocab([items.genre[i] for i in train_items]),
        "year": _vocab([items.year[i] for i in train_items]),
    }
    user_columns = [_lookup(users.raw.tolist(), vocabs["user_id"])]
    user_columns += [_lookup(v, vocabs[f]) for f, v in users.attrs.items()]
    item_columns = [
        _lookup(items.raw.tolist(), vocabs["item_id"]),
        _lookup(items.genre, vocabs["genre"]),
        _lookup(items.year, vocabs["year"]),
    ]
    sparse_names = ["user_id", *users.attrs, *ITEM_FEATURES]
    arrays = {
        "event_user": event_user,
        "event_item": event_item,
        "event_half_stars": half_stars,
        "event_ts": ts,
        "user_raw": users.raw,
        "user_table": np.stack(user_columns, axis=1),
        "item_raw": items.raw,
        "item_table": np.stack(item_columns, axis=1),
        "item_genres": items.genres,
    }
    liked = half_stars >= LIKE_HALF_STARS
    files = [ds.ratings, ds.items, *([ds.users] if ds.users else [])]
    manifest = {
        "dataset": name,
        "source_dir": str(src.resolve()),
        "source_files": {
            f: {"bytes": (src / f).stat().st_size, "sha256": records.file_sha256(src / f)}
            for f in files
        },
        "options": {"max_rows": max_rows, "on_error": on_error},
        "rows_read": ratings.rows,
        "rows_skipped": report.skipped,
        "first_skipped": report.first,
        "protocol": {
            "label": "rating >= 4 stars",
            "split": "global time cut at the 80% / 90% timestamp quantiles; ties stay together",
            "history": "the user's events with a strictly smaller timestamp, newest first",
        },
        "split_start_ts": {s: int(ts[bounds[k]]) for k, s in enumerate(SPLITS)},
        "counts": {"events": n, "users": len(users.raw), "items": len(items.raw), **sizes},
        "base_rate": {
            s: float(liked[bounds[k] : bounds[k + 1]].mean()) for k, s in enumerate(SPLITS)
        },
        "sparse_names": sparse_names,
        "vocab_sizes": {f: len(vocabs[f]) + 2 for f in sparse_names},
        "vocabs": {f: v for f, v in vocabs.items() if f not in ("user_id", "item_id")},
        "genres": list(ds.genres),
        "dense_names": [f"genre={g}" for g in ds.genres] + list(HISTORY_FEATURES),
    }
    return Prepared(arrays, manifest)


def prepare(
    name: str,
    src: Path,
    out: Path,
    *,
    max_rows: int | None = None,
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Parses MovieLens `name` from raw directory `src` into the prepared directory `out`
    (arrays.npz + manifest.json, see `records`) and returns the manifest. Options as `build`."""
    data = build(name, src, max_rows=max_rows, on_error=on_error)
    return records.write(Path(out), data.arrays, data.manifest)


def load(prepared: Path) -> Prepared:
    """A prepared directory, checked (checksum, array shapes, id ranges) against its manifest."""
    arrays, manifest = records.read(Path(prepared))
    _check_prepared(Path(prepared), arrays, manifest)
    return Prepared(arrays, manifest)


def _check_prepared(path: Path, arrays: Mapping[str, np.ndarray], manifest: Mapping) -> None:
    """DataError unless the arrays have the shapes and id ranges the manifest describes."""
    try:
        counts = manifest["counts"]
        n, n_users, n_items = counts["events"], counts["users"], counts["items"]
        names, sizes = manifest["sparse_names"], manifest["vocab_sizes"]
        n_user_features = len(names) - len(ITEM_FEATURES)
        shapes = {
            "event_user": (n,),
            "event_item": (n,),
            "event_half_stars": (n,),
            "event_ts": (n,),
            "user_raw": (n_users,),
            "user_table": (n_users, n_user_features),
            "item_raw": (n_items,),
            "item_table": (n_items, len(ITEM_FEATURES)),
            "item_genres": (n_items, len(manifest["genres"])),
        }
        vocab = np.array([sizes[f] for f in names])
        split_total = sum(counts[s] for s in SPLITS)
    except (KeyError, TypeError) as e:
        raise DataError(f"{path / records.MANIFEST} lacks entry {e}; re-run prepare") from e
    problems = [
        f"{k} has shape {arrays[k].shape if k in arrays else None}, expected {s}"
        for k, s in shapes.items()
        if k not in arrays or arrays[k].shape != s
    ]
    if not problems:
        ts = arrays["event_ts"]
        checks = {
            "split counts do not add up to the events": split_total == n,
            "event_ts is not sorted": bool(np.all(ts[1:] >= ts[:-1])),
            "event_user out of range": bool(np.all(arrays["event_user"] < n_users)),
            "event_item out of range": bool(np.all(arrays["event_item"] < n_items)),
            "ratings outside 1..10 half stars": bool(
                np.all((arrays["event_half_stars"] >= 1) & (arrays["event_half_stars"] <= 10))
            ),
            "vocabulary ids out of range": bool(
                np.all(arrays["user_table"] < vocab[None, :n_user_features])
                and np.all(arrays["item_table"] < vocab[None, n_user_features:])
            ),
        }
        problems = [message for message, ok in checks.items() if not ok]
    if problems:
        raise DataError(
            f"{path}: arrays do not match the manifest: {'; '.join(problems)}; re-run prepare"
        )


def feature_spec(
    manifest: Mapping[str, Any],
    max_len: int = DEFAULT_MAX_LEN,
    tasks: Sequence[str] = DEFAULT_TASKS,
) -> FeatureSpec:
    """The FeatureSpec of a prepared dataset: its sparse features, genre multi-hot + 4 history
    dense features, the "liked" / "other" streams of length `max_len`, whose items and sides
    share the "item_id" and "genre" tables, and the labels `tasks` (TASK_HALF_STARS)."""
    unknown = [t for t in tasks if t not in TASK_HALF_STARS]
    if unknown or not tasks:
        raise ValueError(f"MovieLens tasks must be some of {list(TASK_HALF_STARS)}, got {tasks}")
    names = tuple(manifest["sparse_names"])
    sizes = manifest["vocab_sizes"]
    return FeatureSpec(
        sparse_names=names,
        sparse_vocab_sizes=tuple(sizes[f] for f in names),
        num_dense=len(manifest["dense_names"]),
        streams=tuple(
            StreamSpec(
                name,
                item_vocab_size=sizes["item_id"],
                side_vocab_size=sizes["genre"],
                max_len=max_len,
                item_feature="item_id",
                side_feature="genre",
            )
            for name in STREAMS
        ),
        tasks=tuple(tasks),
    )


# ---------------------------------------------------------------------------------------------
# The data source.


class _Timeline:
    """Selected events grouped by user (or item), in time order within a group: a CSR layout.

    For M selected events of N: `events` [M + 1] are their positions in the time-sorted event
    arrays, grouped and increasing within a group, plus a trailing 0 (a safe gather target for
    padding); the sorted keys group * N + position [M] find a group's events before a position
    with one binary search.
    """

    def __init__(self, group: np.ndarray, num_groups: int, select: np.ndarray):
        self._n = len(group)
        pos = np.flatnonzero(select)
        order = pos[np.argsort(group[pos], kind="stable")]
        self._key = group[order].astype(np.int64) * self._n + order
        self._start = np.searchsorted(self._key, np.arange(num_groups, dtype=np.int64) * self._n)
        self.events = np.append(order, 0)

    def span(self, group: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) [B]: `events[start:end]` are group[b]'s events at positions < bound[b]."""
        end = np.searchsorted(self._key, group.astype(np.int64) * self._n + bound)
        return self._start[group], end


class MovieLensSource:
    """Random-access ranking examples of one split of a prepared MovieLens dataset.

    `src[i]` is example i (the split's i-th rating in time order) in the `kunlun_jax.data.spec`
    format without batch axis; `src.batch(indices)` gives the same examples stacked [B, ...],
    vectorized (feed grain with `batch_fn=src.batch`). Deterministic and thread-safe.
    """

    def __init__(
        self,
        prepared: str | Path | Prepared,
        split: str = "train",
        *,
        max_len: int = DEFAULT_MAX_LEN,
        tasks: Sequence[str] = DEFAULT_TASKS,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.prepared = prepared if isinstance(prepared, Prepared) else load(Path(prepared))
        self.split = split
        self.max_len = max_len
        manifest, a = self.prepared.manifest, self.prepared.arrays
        self.feature_spec = feature_spec(manifest, max_len, tasks)
        counts = manifest["counts"]
        k = SPLITS.index(split)
        self._start = sum(counts[s] for s in SPLITS[:k])
        self._len = counts[split]
        liked = a["event_half_stars"] >= LIKE_HALF_STARS
        self._by_user = {
            s: _Timeline(a["event_user"], counts["users"], sel)
            for s, sel in zip(STREAMS, (liked, ~liked), strict=True)
        }
        self._by_item = {
            s: _Timeline(a["event_item"], counts["items"], sel)
            for s, sel in zip(STREAMS, (liked, ~liked), strict=True)
        }

    @property
    def spec(self) -> FeatureSpec:
        """The FeatureSpec (as `SyntheticSource.spec`)."""
        return self.feature_spec

    @property
    def base_rates(self) -> tuple[float, ...]:
        """The fraction of positive labels in this split, per task (`spec.tasks`)."""
        stars = self.prepared.arrays["event_half_stars"][self._start : self._start + self._len]
        return tuple(float(np.mean(stars >= TASK_HALF_STARS[t])) for t in self.spec.tasks)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (
            f"MovieLensSource({self.prepared.manifest['dataset']!r}, split={self.split!r}, "
            f"examples={self._len}, max_len={self.max_len})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Example `index` (negative counts from the end) without batch axis."""
        return _first(self.batch([index]))

    def batch(self, indices: Sequence[int]) -> Batch:
        """The examples at `indices` stacked along a leading batch axis [B, ...]."""
        a = self.prepared.arrays
        p = self._positions(indices)
        user, item, ts = a["event_user"][p], a["event_item"][p], a["event_ts"][p]
        bound = np.searchsorted(a["event_ts"], ts, "left")  # events before it: strictly older
        seqs, user_counts, item_counts = {}, {}, {}
        for s in STREAMS:
            start, end = self._by_user[s].span(user, bound)
            user_counts[s] = end - start
            seqs[s] = self._history(self._by_user[s], start, end, ts)
            start, end = self._by_item[s].span(item, bound)
            item_counts[s] = end - start
        n_user = user_counts["liked"] + user_counts["other"]
        n_item = item_counts["liked"] + item_counts["other"]
        history = np.stack(
            [
                np.log1p(n_user),
                (user_counts["liked"] + 1) / (n_user + 2),
                np.log1p(n_item),
                (item_counts["liked"] + 1) / (n_item + 2),
            ],
            axis=1,
        )
        return {
            "sparse": np.concatenate([a["user_table"][user], a["item_table"][item]], axis=1),
            "dense": np.concatenate([a["item_genres"][item], history], axis=1).astype(np.float32),
            "label": self._labels(a["event_half_stars"][p]),
            "seqs": seqs,
        }

    def _labels(self, half_stars: np.ndarray) -> np.ndarray:
        """float32 [B] (one task) or [B, K]: each task's label of ratings `half_stars` [B]."""
        thresholds = np.array([TASK_HALF_STARS[t] for t in self.spec.tasks])
        return task_columns((half_stars[:, None] >= thresholds).astype(np.float32))

    def lengths(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """{stream: int32 [B]} the history lengths of `batch(indices)`, without building it."""
        a = self.prepared.arrays
        p = self._positions(indices)
        bound = np.searchsorted(a["event_ts"], a["event_ts"][p], "left")
        out = {}
        for s in STREAMS:
            start, end = self._by_user[s].span(a["event_user"][p], bound)
            out[s] = np.minimum(end - start, self.max_len).astype(np.int32)
        return out

    def _positions(self, indices: Sequence[int]) -> np.ndarray:
        """Positions [B] in the time-sorted event arrays of examples `indices` of this split."""
        index = np.asarray(indices, np.int64).reshape(-1)
        index = np.where(index < 0, index + self._len, index)
        bad = (index < 0) | (index >= self._len)
        if bad.any():
            i = np.asarray(indices).reshape(-1)[np.argmax(bad)]
            raise IndexError(f"index {i} out of range for {self._len} examples")
        return self._start + index

    def _history(
        self, timeline: _Timeline, start: np.ndarray, end: np.ndarray, ts: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The stream arrays (spec format, [B, T]) of events[start:end], newest first."""
        a = self.prepared.arrays
        positions, length = newest_first_positions(start, end, self.max_len)
        real = positions >= 0
        pos = timeline.events[positions]  # -1: the trailing 0, a safe gather target
        ids = a["item_table"][a["event_item"][pos]]
        return {
            "item": np.where(real, ids[..., 0], PAD),
            "side": np.where(real, ids[..., 1], PAD),
            "dt": np.where(real, ts[:, None] - a["event_ts"][pos], 0).astype(np.float32),
            "length": length,
        }


def _first(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The first example of a batch: every array without its leading axis."""
    return {k: _first(v) if isinstance(v, Mapping) else v[0] for k, v in batch.items()}


@functools.lru_cache(maxsize=2)
def _build_cached(name: str, src: str) -> Prepared:
    return build(name, Path(src))


def open_source(
    name: str,
    path: str | Path,
    split: str,
    *,
    max_len: int = DEFAULT_MAX_LEN,
    tasks: Sequence[str] = DEFAULT_TASKS,
) -> MovieLensSource:
    """Split `split` of MovieLens `name` from `path`: a prepared directory (with manifest.json)
    or a raw one. A raw directory is prepared in memory, never written to (nothing is added next
    to the user's data); the result is cached per process, so the train and eval sources parse
    it once (ML-100K: under a second; ML-1M: seconds, so prefer `prepare` once for it)."""
    if not str(path):
        raise ValueError(
            f"data.path is empty: set data.path to a raw {name} directory or one made by "
            f"`kunlun-jax data prepare {name} <raw dir> <out dir>`"
        )
    path = Path(path).expanduser()
    if records.is_prepared(path):
        data = load(path)
        if (held := data.manifest.get("dataset")) != name:
            raise DataError(
                f"{path} holds {held!r}, but data.source is {name!r}: set "
                f"data.source={held}, or data.path to a prepared {name}"
            )
    else:
        data = _build_cached(name, str(path.resolve()))
    return MovieLensSource(data, split, max_len=max_len, tasks=tasks)


# ---------------------------------------------------------------------------------------------
# Download (needs internet; never called by the tests).


def verify_checksum(path: Path, expected: str, algorithm: str = "sha256") -> str:
    """The hex digest of a file; DataError if it differs from `expected` (md5, sha256, ...)."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    if digest != expected.lower():
        raise DataError(
            f"{path}: {algorithm} {digest} does not match the expected {expected}; the file is "
            "corrupt or changed upstream: delete it and download again"
        )
    return digest


def download(name: str, dest: Path, *, overwrite: bool = False) -> Path:
    """Downloads MovieLens `name` from GroupLens into `dest`, checks the zip's md5 (GroupLens'
    published value; ml-latest-small changes between builds, so it has none), unpacks it and
    returns the unpacked directory, ready for `prepare`. An unpacked directory already in
    `dest` is an error before anything is fetched, unless `overwrite`. ML-100K and ML-1M may
    not be redistributed: keep them out of repositories and wheels (see the README inside)."""
    ds = dataset(name)
    dest = Path(dest)
    if (dest / ds.archive_dir).exists() and not overwrite:
        raise FileExistsError(
            f"{dest / ds.archive_dir} already exists; prepare it as it is, or pass --overwrite "
            "to download it again over it"
        )
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / ds.url.rsplit("/", 1)[1]
    partial = archive.with_name(archive.name + ".part")
    with urllib.request.urlopen(ds.url, timeout=60) as response, partial.open("wb") as f:
        shutil.copyfileobj(response, f)
    if ds.md5:
        verify_checksum(partial, ds.md5, "md5")
    os.replace(partial, archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
    return dest / ds.archive_dir
