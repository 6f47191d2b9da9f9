"""Reading a release's raw files (user, item and rating tables), every row checked: a bad row
raises a DataError naming file, line and field, or is skipped and counted (on_error="skip")."""

from __future__ import annotations

import bisect
import dataclasses
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kunlun_jax.data.movielens.protocol import AGE_BUCKETS, DECADES, USER_FEATURES
from kunlun_jax.data.movielens.releases import Dataset, dataset
from kunlun_jax.data.validate import Report, RowError, read_table, to_float, to_int

_TITLE_YEAR = re.compile(r"\((\d{4})[^()]*\)\s*$")  # "Toy Story (1995)", "Show (2006–2007)"
_RELEASE_DATE = re.compile(r"\d{1,2}-[A-Za-z]{3}-(\d{4})")  # ML-100K: "01-Jan-1995"
MAX_ID = 2**63 - 1  # user and item ids are stored as int64
# Valid rating times, unix seconds: 1995-01-01 .. 2100-01-01 UTC. MovieLens began collecting
# in 1995 (ml-latest-small's earliest rating is 1996-03-29), so a smaller value is a timestamp
# cut short (a truncated file) or not in seconds.
TS_RANGE = (788_918_400, 4_102_444_800)


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


def _id(text: str, field: str) -> int:
    """A user or item id: an integer in [1, MAX_ID]; RowError otherwise."""
    return to_int(text, field, lo=1, hi=MAX_ID)


def _timestamp(text: str, field: str) -> int:
    """Unix seconds within TS_RANGE; RowError otherwise."""
    ts = to_int(text, field)
    if not TS_RANGE[0] <= ts <= TS_RANGE[1]:
        raise RowError(
            field,
            f"{ts} is not unix seconds in 1995-01-01..2100-01-01 UTC "
            "(is the file truncated or corrupt?)",
            "out of range",
        )
    return ts


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
            user = _id(f[0], cols[0])
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
            item = _id(f[0], cols[0])
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
class Ratings:
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
) -> Ratings | None:
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
        and np.all((table["ts"] >= TS_RANGE[0]) & (table["ts"] <= TS_RANGE[1]))
    )
    if not ok:
        return None
    return Ratings(
        user=table["user"],
        item=at.astype(np.int32),
        half_stars=half.astype(np.int8),
        ts=table["ts"],
        rows=len(table),
    )


def read_ratings(
    name: str,
    src: Path,
    users: np.ndarray | None,
    items: ItemTable,
    report: Report,
    max_rows: int | None,
) -> Ratings:
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
            user = _id(f[0], cols[0])
            item = _id(f[1], cols[1])
            half = rating(f[2])
            ts = _timestamp(f[3], cols[3])
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
    return Ratings(
        user=np.array(out[0], np.int64),
        item=np.array(out[1], np.int32),
        half_stars=np.array(out[2], np.int8),
        ts=np.array(out[3], np.int64),
        rows=len(out[0]) + n_skipped,
    )
