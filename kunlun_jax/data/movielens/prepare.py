"""Preparing: raw files -> time-sorted event arrays, vocabularies and a manifest (`records`),
checked again when loaded; the FeatureSpec of a prepared dataset."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kunlun_jax.data import records
from kunlun_jax.data.movielens.protocol import (
    DEFAULT_MAX_LEN,
    DEFAULT_TASKS,
    HISTORY_FEATURES,
    ITEM_FEATURES,
    LIKE_HALF_STARS,
    OOV,
    PAD,
    SPLIT_QUANTILES,
    SPLITS,
    STREAMS,
    TASK_HALF_STARS,
)
from kunlun_jax.data.movielens.raw import UserTable, read_items, read_ratings, read_users
from kunlun_jax.data.movielens.releases import dataset
from kunlun_jax.data.spec import FeatureSpec, StreamSpec
from kunlun_jax.data.validate import DataError, OnError, Report


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
    ratings = read_ratings(name, src, None if users is None else users.raw, items, report, max_rows)
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
