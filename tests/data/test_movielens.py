"""MovieLens loaders: the batch format, labels, leakage, the time split, vocabularies, input errors.

The committed ml-latest-small slice (tests/fixtures/ml-latest-small) covers the protocol. ML-100K
and the ML-1M side tables are used from the shared data directory beside the repo when present
(they may not be redistributed, so they are not in the repo). Malformed inputs are tiny files
written to tmp_path.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from kunlun_jax.config import DataConfig
from kunlun_jax.data import movielens as ml
from kunlun_jax.data import records
from kunlun_jax.data.pipeline import eval_batches, make_source
from kunlun_jax.data.spec import BatchError, validate_batch
from kunlun_jax.data.synthetic import stack_examples
from kunlun_jax.data.validate import DataError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ml-latest-small"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ML100K = SHARED / "movielens-100k"
ML1M_META = SHARED / "movielens-1m-meta"
LATEST = "movielens-latest-small"


def _raw_fixture() -> list[tuple[int, int, float, int]]:
    """(user, item, rating, ts) of the fixture's ratings.csv, in file order (read with csv)."""
    with (FIXTURE / "ratings.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    return [(int(u), int(i), float(r), int(t)) for u, i, r, t in rows]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("latest-small")
    ml.prepare(LATEST, FIXTURE, out)
    return out


@pytest.fixture(scope="module")
def sources(prepared: Path) -> dict[str, ml.MovieLensSource]:
    return {s: ml.MovieLensSource(prepared, s) for s in ml.SPLITS}


def _whole(source: ml.MovieLensSource) -> dict:
    return source.batch(np.arange(len(source)))


def _raw_ids(source: ml.MovieLensSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw user ids, raw item ids and timestamps [n] of a split's examples."""
    a, counts = source.prepared.arrays, source.prepared.manifest["counts"]
    start = sum(counts[s] for s in ml.SPLITS[: ml.SPLITS.index(source.split)])
    p = start + np.arange(len(source))
    return a["user_raw"][a["event_user"][p]], a["item_raw"][a["event_item"][p]], a["event_ts"][p]


# ---------------------------------------------------------------------------------------------
# The committed ml-latest-small slice.


def test_fixture_batches_pass_the_spec(sources: dict[str, ml.MovieLensSource]) -> None:
    assert sum(len(s) for s in sources.values()) == len(_raw_fixture())
    for source in sources.values():
        spec = source.feature_spec
        assert spec.sparse_names == ("user_id", "item_id", "genre", "year")
        assert spec.num_dense == 20 + len(ml.HISTORY_FEATURES)
        assert {(s.item_feature, s.side_feature) for s in spec.streams} == {("item_id", "genre")}
        for start in range(0, len(source), 1000):
            validate_batch(source.batch(range(start, min(start + 1000, len(source)))), spec)
        one = stack_examples([source[i] for i in (0, 5, -1)])
        whole = source.batch([0, 5, len(source) - 1])
        for key in ("sparse", "dense", "label"):
            np.testing.assert_array_equal(one[key], whole[key])
            assert one[key].dtype == whole[key].dtype
        for name in ml.STREAMS:
            for key, value in whole["seqs"][name].items():
                np.testing.assert_array_equal(one["seqs"][name][key], value)


def test_labels_are_ratings_of_at_least_4(sources: dict[str, ml.MovieLensSource]) -> None:
    rating = {(u, i, t): r for u, i, r, t in _raw_fixture()}
    seen = set()
    for source in sources.values():
        users, items, ts = _raw_ids(source)
        keys = list(zip(users.tolist(), items.tolist(), ts.tolist(), strict=True))
        expected = np.array([rating[k] >= 4.0 for k in keys], np.float32)
        np.testing.assert_array_equal(_whole(source)["label"], expected)
        assert source.base_rates == pytest.approx((expected.mean(),))
        assert source.base_rates[0] == source.prepared.manifest["base_rate"][source.split]
        seen.update(keys)
    assert seen == set(rating)


def test_multi_task_labels_are_columns_in_the_tasks_order(prepared: Path) -> None:
    rating = {(u, i, t): r for u, i, r, t in _raw_fixture()}
    source = ml.MovieLensSource(prepared, "train", tasks=("love", "like"))
    assert source.spec.tasks == ("love", "like")
    keys = list(zip(*(x.tolist() for x in _raw_ids(source)), strict=True))
    stars = np.array([rating[k] for k in keys])
    expected = np.stack([stars == 5.0, stars >= 4.0], axis=1).astype(np.float32)
    assert 0 < expected[:, 0].sum() < expected[:, 1].sum()
    labels = _whole(source)["label"]
    np.testing.assert_array_equal(labels, expected)
    assert source.base_rates == pytest.approx(tuple(expected.mean(axis=0)))
    validate_batch(source.batch(range(8)), source.spec)
    with pytest.raises(BatchError, match=r"'label' must have shape \[B, 2\]"):
        validate_batch({**source.batch(range(8)), "label": labels[:8, 0]}, source.spec)
    with pytest.raises(ValueError, match="MovieLens tasks must be some of"):
        ml.MovieLensSource(prepared, "train", tasks=("click",))


def test_histories_and_features_come_from_the_strict_past(prepared: Path) -> None:
    """Rebuilds every example's histories (at max_len 50 and 4) and history features by brute
    force from the raw file: the user's events with a smaller timestamp, newest first (later
    file rows first on ties), and the counts of the user's and the item's earlier ratings."""
    raw = _raw_fixture()
    by_user: dict[int, list[tuple[int, tuple]]] = {}
    by_item: dict[int, list[tuple]] = {}
    for k, e in enumerate(raw):
        by_user.setdefault(e[0], []).append((k, e))
        by_item.setdefault(e[1], []).append(e)
    for split in ml.SPLITS:
        source = ml.MovieLensSource(prepared, split)
        a = source.prepared.arrays
        item_id = dict(zip(a["item_raw"].tolist(), a["item_table"][:, 0].tolist(), strict=True))
        genre = dict(zip(a["item_raw"].tolist(), a["item_table"][:, 1].tolist(), strict=True))
        batches = {50: _whole(source), 4: _whole(ml.MovieLensSource(prepared, split, max_len=4))}
        for b, (user, item, ts) in enumerate(zip(*_raw_ids(source), strict=True)):
            past = sorted(
                ((e[3], k, e) for k, e in by_user[user] if e[3] < ts), key=lambda x: x[:2]
            )[::-1]
            for (max_len, batch), name in itertools.product(batches.items(), ml.STREAMS):
                events = [e for *_, e in past if (e[2] >= 4.0) == (name == "liked")][:max_len]
                seq = {k: v[b] for k, v in batch["seqs"][name].items()}
                n = len(events)
                assert seq["length"] == n
                assert seq["item"][:n].tolist() == [item_id[e[1]] for e in events]
                assert seq["side"][:n].tolist() == [genre[e[1]] for e in events]
                dt = np.float32([ts - e[3] for e in events])
                np.testing.assert_array_equal(seq["dt"][:n], dt)
                assert np.all(seq["dt"][:n] >= 1)  # strictly earlier: never the same second
                assert not seq["item"][n:].any()
                assert not seq["dt"][n:].any()
            likes = sum(e[2] >= 4.0 for *_, e in past)
            item_past = [e for e in by_item[item] if e[3] < ts]
            item_likes = sum(e[2] >= 4.0 for e in item_past)
            expected = [
                np.log1p(len(past)),
                (likes + 1) / (len(past) + 2),
                np.log1p(len(item_past)),
                (item_likes + 1) / (len(item_past) + 2),
            ]
            for batch in batches.values():
                np.testing.assert_allclose(batch["dense"][b, -4:], expected, rtol=1e-6)


def test_split_is_by_time_80_10_10(sources: dict[str, ml.MovieLensSource]) -> None:
    ts = {s: _raw_ids(source)[2] for s, source in sources.items()}
    assert ts["train"].max() < ts["eval"].min() <= ts["eval"].max() < ts["test"].min()
    for values in ts.values():
        assert np.all(np.diff(values) >= 0)
    total = sum(len(v) for v in ts.values())
    assert abs(len(ts["train"]) / total - 0.8) < 0.01
    assert abs(len(ts["eval"]) / total - 0.1) < 0.01
    manifest = sources["train"].prepared.manifest
    assert manifest["split_start_ts"] == {s: int(v[0]) for s, v in ts.items()}


def test_vocabularies_come_from_train_with_oov(sources: dict[str, ml.MovieLensSource]) -> None:
    train_users, train_items, _ = _raw_ids(sources["train"])
    spec = sources["train"].feature_spec
    sizes = dict(zip(spec.sparse_names, spec.sparse_vocab_sizes, strict=True))
    assert sizes["user_id"] == len(set(train_users.tolist())) + 2
    assert sizes["item_id"] == len(set(train_items.tolist())) + 2
    train = _whole(sources["train"])
    assert np.all(train["sparse"][:, :2] >= 2)  # every train user and item is in the vocabulary
    for name in ml.STREAMS:  # train histories hold train events only
        seq = train["seqs"][name]
        real = np.arange(seq["item"].shape[1]) < seq["length"][:, None]
        assert np.all(seq["item"][real] >= 2)
    n_oov = 0
    for split in ("eval", "test"):
        users, items, _ = _raw_ids(sources[split])
        sparse = _whole(sources[split])["sparse"]
        new_user = ~np.isin(users, train_users)
        new_item = ~np.isin(items, train_items)
        np.testing.assert_array_equal(sparse[:, 0] == ml.OOV, new_user)
        np.testing.assert_array_equal(sparse[:, 1] == ml.OOV, new_item)
        n_oov += new_user.sum() + new_item.sum()
    assert n_oov > 0  # the slice has users and items that first appear after the train period


def test_prepare_is_deterministic_and_batches_order_free(prepared: Path, tmp_path: Path) -> None:
    again = ml.prepare(LATEST, FIXTURE, tmp_path)
    first = json.loads((prepared / records.MANIFEST).read_text())
    assert again == first
    source = ml.MovieLensSource(tmp_path, "test")
    order = np.random.default_rng(0).permutation(len(source))
    shuffled = source.batch(order)
    whole = _whole(source)
    np.testing.assert_array_equal(shuffled["sparse"], whole["sparse"][order])
    np.testing.assert_array_equal(
        shuffled["seqs"]["liked"]["dt"], whole["seqs"]["liked"]["dt"][order]
    )


def test_row_reader_matches_fast_reader(prepared: Path, tmp_path: Path) -> None:
    """Quoted CSV fields send the file to the row-by-row reader (numpy's fast one rejects them):
    both readers give the same arrays."""
    shutil.copy(FIXTURE / "movies.csv", tmp_path)
    lines = (FIXTURE / "ratings.csv").read_text().splitlines()
    quoted = [lines[0]] + [",".join(f'"{v}"' for v in line.split(",")) for line in lines[1:]]
    (tmp_path / "ratings.csv").write_text("\r\n".join(quoted))  # CRLF, no final line end
    data = ml.build(LATEST, tmp_path)
    assert records.arrays_sha256(data.arrays) == ml.load(prepared).manifest["arrays_sha256"]
    head = ml.build(LATEST, tmp_path, max_rows=2000)
    assert records.arrays_sha256(head.arrays) == records.arrays_sha256(
        ml.build(LATEST, FIXTURE, max_rows=2000).arrays
    )


def test_make_source_reads_prepared_or_raw_dirs(prepared: Path) -> None:
    before = sorted(p.name for p in FIXTURE.iterdir())
    for path in (prepared, FIXTURE):
        cfg = DataConfig(source=LATEST, path=str(path))
        source, spec = make_source(cfg, "eval")
        assert spec == source.feature_spec
        assert len(source) > 0
        batches = list(eval_batches(source, 256))
        assert sum(n for _, n in batches) == len(source)
        validate_batch(batches[-1][0], spec)
        assert len(make_source(cfg, "test")[0]) > 0
    assert sorted(p.name for p in FIXTURE.iterdir()) == before  # the raw dir is never written to
    with pytest.raises(DataError, match=r"holds 'movielens-latest-small'.*set data\.source=movi"):
        make_source(DataConfig(source="movielens-100k", path=str(prepared)), "train")
    with pytest.raises(ValueError, match=r"data\.path is empty"):
        make_source(DataConfig(source=LATEST), "train")


# ---------------------------------------------------------------------------------------------
# ML-100K and ML-1M from the shared data directory (not redistributable: skipped when absent).


def _require(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"{path} not found: it is not redistributable, so it is not in the repo")


def test_ml100k_subset(tmp_path: Path) -> None:
    _require(ML100K)
    manifest = ml.prepare("movielens-100k", ML100K, tmp_path, max_rows=5000)
    counts = manifest["counts"]
    assert manifest["rows_read"] == counts["events"] == 5000
    assert counts["train"] + counts["eval"] + counts["test"] == 5000
    assert (counts["users"], counts["items"]) == (943, 1682)
    assert manifest["sparse_names"][:5] == ["user_id", "age", "gender", "occupation", "zip_prefix"]
    assert manifest["vocab_sizes"]["gender"] == 4
    for split in ml.SPLITS:
        source = ml.MovieLensSource(tmp_path, split)
        assert source.feature_spec.num_dense == 19 + 4
        validate_batch(source.batch(range(len(source))), source.feature_spec)


def test_ml100k_full_file() -> None:
    _require(ML100K)
    data = ml.build("movielens-100k", ML100K)
    m = data.manifest
    assert m["rows_read"] == m["counts"]["events"] == 100_000
    assert (m["counts"]["train"], m["counts"]["test"]) == (79_999, 10_000)
    assert np.mean(data.arrays["event_half_stars"] >= 8) == pytest.approx(0.55375)
    source = ml.MovieLensSource(data, "test")
    validate_batch(source.batch(range(0, len(source), 7)), source.feature_spec)


def test_ml100k_row_count_is_verified(tmp_path: Path) -> None:
    _require(ML100K)
    for name in ("u.item", "u.user"):
        (tmp_path / name).symlink_to(ML100K / name)
    lines = (ML100K / "u.data").read_text().splitlines(keepends=True)
    (tmp_path / "u.data").write_text("".join(lines[:300]))
    with pytest.raises(DataError, match=r"has 300 rating rows; the ML-100K release has 100,000"):
        ml.build("movielens-100k", tmp_path)


def test_ml100k_truncated_last_field_is_caught(tmp_path: Path) -> None:
    """u.data cut inside its last timestamp: an error by default, a counted skip with "skip"."""
    _require(ML100K)
    for name in ("u.item", "u.user"):
        (tmp_path / name).symlink_to(ML100K / name)
    (tmp_path / "u.data").write_bytes((ML100K / "u.data").read_bytes()[:-5])
    with pytest.raises(DataError, match=r"u\.data, line 100000, field 'timestamp': \d+ is not u"):
        ml.build("movielens-100k", tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 invalid rows"):
        data = ml.build("movielens-100k", tmp_path, on_error="skip")
    assert data.manifest["rows_skipped"] == {"u.data": {"timestamp: out of range": 1}}
    assert data.manifest["counts"]["events"] == 99_999
    assert data.arrays["event_ts"][0] >= 788_918_400  # 1995-01-01 UTC


def test_ml1m_side_tables() -> None:
    _require(ML1M_META)
    users = ml.read_users("movielens-1m", ML1M_META)
    assert len(users.raw) == 6040
    assert set(users.attrs) == set(ml.USER_FEATURES)
    assert set(users.attrs["age"]) == set(ml.AGE_BUCKETS)
    assert set(users.attrs["gender"]) == {"M", "F"}
    assert set(users.attrs["occupation"]) == set(range(21))
    items = ml.read_items("movielens-1m", ML1M_META)
    assert items.genres.shape == (len(items.raw), 18) == (3883, 18)
    assert items.genres.sum(axis=1).min() >= 1
    assert None not in items.year
    assert None not in items.genre
    assert items.genre[0] == "Animation"  # Toy Story: Animation|Children's|Comedy


def test_ml1m_without_ratings_says_how_to_get_them() -> None:
    _require(ML1M_META)
    with pytest.raises(FileNotFoundError, match="kunlun-jax data download movielens-1m"):
        ml.build("movielens-1m", ML1M_META)


def _write_ml1m(path: Path, n: int) -> None:
    """A tiny directory in ML-1M's `::` format: 3 users, 3 movies (the last one rated only in
    the last 4 of the n ratings, 60 s apart), Latin-1 titles."""
    path.mkdir(exist_ok=True)
    (path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::5511\n")
    (path / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action|Crime\n"
        "3::Amélie (2001)::Comedy|Romance\n".encode("latin-1")
    )
    rows = [
        f"{1 + k % 3}::{3 if k >= n - 4 else 1 + k % 2}::{1 + k % 5}::{978300760 + 60 * k}"
        for k in range(n)
    ]
    (path / "ratings.dat").write_text("\n".join(rows) + "\n")


def test_ml1m_format_and_row_count(tmp_path: Path) -> None:
    _write_ml1m(tmp_path, 40)
    with pytest.raises(DataError, match=r"has 40 rating rows; the ML-1M release has 1,000,209"):
        ml.build("movielens-1m", tmp_path)
    data = ml.build("movielens-1m", tmp_path, max_rows=40)
    assert data.manifest["counts"]["events"] == 40
    assert data.manifest["vocabs"]["age"] == [1, 25, 56]
    assert data.manifest["vocabs"]["year"] == [1990]  # Amélie (2001) is not rated in train
    for split in ml.SPLITS:
        source = ml.MovieLensSource(data, split)
        batch = source.batch(range(len(source)))
        validate_batch(batch, source.feature_spec)
    item_id = source.feature_spec.sparse_names.index("item_id")
    assert np.all(batch["sparse"][:, item_id:] == ml.OOV)  # Amélie: new item, genre and decade


# ---------------------------------------------------------------------------------------------
# Malformed inputs.

MOVIES = (
    "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
    '2,"Heat, The (1995)",Action|Crime\n3,Untitled,(no genres listed)\n'
)


T0 = 1_000_000_000  # 2001-09-09 UTC: a plausible MovieLens timestamp
INT64_OVERFLOW = "99999999999999999999"


def _ratings(n: int = 30) -> list[str]:
    return [f"{1 + k % 3},{1 + k % 3},{(1 + k % 10) / 2:.1f},{T0 + 10 * k}" for k in range(n)]


def _write_latest(
    path: Path,
    extra: list[str],
    *,
    header: str = "userId,movieId,rating,timestamp",
    movies: str = MOVIES,
) -> None:
    (path / "movies.csv").write_text(movies)
    (path / "ratings.csv").write_text("\n".join([header, *_ratings(), *extra]) + "\n")


BAD_ROWS = {  # the bad line (line 32 of ratings.csv) -> the error message
    "1,2,4.0": r"line 32, field 'row': has 3 fields, expected 4",
    "1,2,4.0,5,6": r"line 32, field 'row': has 5 fields, expected 4",
    f"x,1,4.0,{T0}": r"line 32, field 'userId': 'x' is not an integer",
    f"0,1,4.0,{T0}": r"line 32, field 'userId': 0 is outside \[1, 9223372036854775807\]",
    f"{INT64_OVERFLOW},1,4.0,{T0}": r"line 32, field 'userId': 9{20} is outside \[1, 92",
    f"1,999,4.0,{T0}": r"line 32, field 'movieId': item 999 is not in movies.csv",
    f"1,1,4.2,{T0}": r"line 32, field 'rating': '4.2' is not one of 0.5, 1.0, ..., 5.0",
    f"1,1,6.0,{T0}": r"line 32, field 'rating': '6.0' is not one of",
    f"1,1,four,{T0}": r"line 32, field 'rating': 'four' is not a number",
    f"1,1,nan,{T0}": r"line 32, field 'rating': 'nan' is not finite",
    "1,1,4.0,yesterday": r"line 32, field 'timestamp': 'yesterday' is not an integer",
    "1,1,4.0,-5": r"line 32, field 'timestamp': -5 is not unix seconds in 1995-01-01\.\.2100",
    "1,1,4.0,87995": r"line 32, field 'timestamp': 87995 is not unix .* truncated",  # cut short
    f"1,1,4.0,{INT64_OVERFLOW}": r"line 32, field 'timestamp': 9{20} is not unix seconds",
    "": r"line 32, field 'row': has 0 fields",
}


@pytest.mark.parametrize(("line", "message"), BAD_ROWS.items())
def test_bad_rating_rows_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    _write_latest(tmp_path, [line, f"1,1,4.0,{T0 + 1000}"])
    with pytest.raises(DataError, match=rf"ratings\.csv, {message}"):
        ml.build(LATEST, tmp_path)


def test_skipped_rows_are_counted(tmp_path: Path) -> None:
    bad = ["1,2,4.0", "1,1,6.0,100", "1,1,4.2,100", f"1,999,4.0,{T0}", "1,1,4.0,-5", "1,1,4.0,87"]
    bad += [f"1,1,4.0,{INT64_OVERFLOW}", f"{INT64_OVERFLOW},1,4.0,{T0}"]  # int64 overflows
    _write_latest(tmp_path, bad)
    with pytest.warns(UserWarning, match=r"skipped 8 invalid rows .* first: .*line 32"):
        manifest = ml.prepare(LATEST, tmp_path, tmp_path / "out", on_error="skip")
    assert (manifest["rows_read"], manifest["counts"]["events"]) == (38, 30)
    assert manifest["rows_skipped"] == {
        "ratings.csv": {
            "row: wrong column count": 1,
            "rating: not in the valid set": 2,
            "movieId: unknown item": 1,
            "timestamp: out of range": 3,
            "userId: out of range": 1,
        }
    }
    assert "ratings.csv, line 32, field 'row'" in manifest["first_skipped"]["ratings.csv"]
    with pytest.raises(ValueError, match="on_error must be"):
        ml.build(LATEST, tmp_path, on_error="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("movies", "message"),
    [
        (MOVIES + "4,Cartoon (2000),Cartoon\n", r"movies\.csv, line 5, field 'genres': unknown"),
        (
            MOVIES + "2,Heat again (1995),Action\n",
            r"movies\.csv, line 5, field 'movieId': id 2 app",
        ),
        (
            MOVIES + f"{INT64_OVERFLOW},Big (1988),Comedy\n",
            r"movies\.csv, line 5, field 'movieId': 9{20} is outside \[1, 9223372036854775807\]",
        ),
        ("movieId,name,genres\n1,Toy Story (1995),Comedy\n", r"unknown columns \['name'\]"),
        ("", r"movies\.csv is empty"),
        ("movieId,title,genres\n", r"movies\.csv has no data rows"),
    ],
)
def test_bad_movie_tables(tmp_path: Path, movies: str, message: str) -> None:
    _write_latest(tmp_path, [], movies=movies)
    with pytest.raises(DataError, match=message):
        ml.build(LATEST, tmp_path)


def test_bad_rating_files(tmp_path: Path) -> None:
    _write_latest(tmp_path, [], header="userId,movieId,stars,timestamp")
    with pytest.raises(DataError, match=r"line 1: header .* \(unknown columns \['stars'\], miss"):
        ml.build(LATEST, tmp_path)
    (tmp_path / "ratings.csv").write_text("")
    with pytest.raises(DataError, match=r"ratings\.csv is empty"):
        ml.build(LATEST, tmp_path)
    (tmp_path / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,4.0,1\xff\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 2: not valid utf-8"):
        ml.build(LATEST, tmp_path)
    (tmp_path / "ratings.csv").write_text(
        f"userId,movieId,rating,timestamp\n1,1,4.0,{T0}\n1,2,3.0,{T0}\n"
    )
    with pytest.raises(DataError, match="cannot be cut by time into non-empty"):
        ml.build(LATEST, tmp_path)
    (tmp_path / "ratings.csv").unlink()
    with pytest.raises(FileNotFoundError, match="kunlun-jax data download movielens-latest-small"):
        ml.build(LATEST, tmp_path)


def test_bad_ml100k_rows(tmp_path: Path) -> None:
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|X|other|94043\n")
    with pytest.raises(DataError, match=r"u\.user, line 2, field 'gender': 'X' is not M or F"):
        ml.read_users("movielens-100k", tmp_path)
    (tmp_path / "u.user").write_text(f"{INT64_OVERFLOW}|24|M|technician|85711\n")
    with pytest.raises(DataError, match=r"u\.user, line 1, field 'user_id': 9{20} is outside"):
        ml.read_users("movielens-100k", tmp_path)
    flags = "|".join("0" * 18)
    (tmp_path / "u.item").write_text(f"1|Toy Story (1995)|1995-01-01||url|1|{flags}\n")
    with pytest.raises(DataError, match=r"u\.item, line 1, field 'release_date': '1995-01-01'"):
        ml.read_items("movielens-100k", tmp_path)
    (tmp_path / "u.item").write_text(f"1|Toy Story (1995)|01-Jan-1995||url|2|{flags}\n")
    with pytest.raises(DataError, match=r"u\.item, line 1, field 'unknown': 2 is outside \[0, 1\]"):
        ml.read_items("movielens-100k", tmp_path)
    (tmp_path / "u.item").write_text(f"1|Toy Story (1995)|01-Jan-1995||url|1|{flags}\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    (tmp_path / "u.data").write_text("1\t1\t3\t881250949\n1\t1\t7\t881250950\n")
    with pytest.raises(DataError, match=r"u\.data, line 2, field 'rating': '7' is not one of 1..5"):
        ml.build("movielens-100k", tmp_path)
    (tmp_path / "u.data").write_text("1\t1\t3\t881250949\n2\t1\t4\t881250950\n")
    with pytest.raises(
        DataError, match=r"u\.data, line 2, field 'user_id': user 2 is not in u\.user"
    ):
        ml.build("movielens-100k", tmp_path)


# ---------------------------------------------------------------------------------------------
# Corrupt prepared directories and checksums.


def _copy(prepared: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(prepared, out)
    return out


def test_corrupt_prepared_dirs(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        ml.load(tmp_path)
    out = _copy(prepared, tmp_path)
    text = (out / records.MANIFEST).read_text()
    (out / records.MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"manifest\.json is corrupt or truncated"):
        ml.load(out)
    manifest = json.loads(text)
    (out / records.MANIFEST).write_text(json.dumps({**manifest, "format_version": 0}))
    with pytest.raises(DataError, match="format_version 0"):
        ml.load(out)
    (out / records.MANIFEST).write_text(text)
    blob = (out / records.ARRAYS).read_bytes()
    (out / records.ARRAYS).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"arrays\.npz is corrupt or truncated"):
        ml.load(out)
    ml.prepare(LATEST, FIXTURE, tmp_path / "other", max_rows=1000)
    shutil.copy(tmp_path / "other" / records.ARRAYS, out / records.ARRAYS)
    with pytest.raises(DataError, match="checksum mismatch"):
        ml.load(out)
    shutil.copy(prepared / records.ARRAYS, out / records.ARRAYS)
    counts = {**manifest["counts"], "users": manifest["counts"]["users"] + 1}
    edited = {**manifest, "counts": counts}
    edited["manifest_sha256"] = records.manifest_sha256(edited)  # consistent, but wrong
    (out / records.MANIFEST).write_text(json.dumps(edited))
    with pytest.raises(DataError, match=r"arrays do not match the manifest: user_raw has shape"):
        ml.load(out)


def _move_train_to_eval(m: dict) -> None:
    m["counts"]["train"] -= 100
    m["counts"]["eval"] += 100


@pytest.mark.parametrize(
    "edit",
    [
        _move_train_to_eval,
        lambda m: m["vocab_sizes"].update(item_id=m["vocab_sizes"]["item_id"] + 1),
        lambda m: m["sparse_names"].reverse(),
        lambda m: m["dense_names"].pop(),
        lambda m: m["genres"].reverse(),
        lambda m: m["split_start_ts"].update(eval=m["split_start_ts"]["eval"] - 1),
        lambda m: m.pop("manifest_sha256"),
    ],
    ids=["counts", "vocab_sizes", "sparse_names", "dense_names", "genres", "split", "no-hash"],
)
def test_manifest_edits_are_caught(prepared: Path, tmp_path: Path, edit) -> None:
    out = _copy(prepared, tmp_path)
    manifest = json.loads((out / records.MANIFEST).read_text())
    edit(manifest)
    (out / records.MANIFEST).write_text(json.dumps(manifest, indent=1))
    with pytest.raises(DataError, match=r"manifest\.json .*manifest_sha256.*re-run `kunlun-jax da"):
        ml.load(out)


def test_prepared_dirs_of_older_formats_say_re_run_prepare(prepared: Path, tmp_path: Path) -> None:
    """A directory prepared before manifest_sha256 (format_version 1) is refused, not trusted."""
    out = _copy(prepared, tmp_path)
    manifest = json.loads((out / records.MANIFEST).read_text())
    del manifest["manifest_sha256"]
    (out / records.MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(DataError, match=r"format_version 1; .* reads 2: re-run `kunlun-jax data"):
        ml.load(out)


def test_verify_checksum(tmp_path: Path) -> None:
    path = tmp_path / "archive.zip"
    path.write_bytes(b"kunlun")
    md5 = "0c8c0603cba473fa0f6c361b9af26035"
    sha256 = "5edba3283300292e1b54490fc27dce4ba5cffebee57f1d292680aa8b0fc5fa19"
    assert ml.verify_checksum(path, md5, "md5") == md5
    assert ml.verify_checksum(path, sha256.upper()) == sha256
    with pytest.raises(DataError, match=r"archive\.zip: sha256 5edba3.* does not match the expec"):
        ml.verify_checksum(path, "0" * 64)


def test_download_never_unpacks_over_an_existing_copy(tmp_path: Path, monkeypatch) -> None:
    """A dataset already unpacked in dest is refused before anything is fetched."""
    (tmp_path / "ml-latest-small").mkdir()
    (tmp_path / "ml-latest-small" / "ratings.csv").write_text("mine")

    def no_network(*args, **kwargs):
        raise AssertionError("fetched although the copy exists")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(FileExistsError, match=r"ml-latest-small already exists.*--overwrite"):
        ml.download("movielens-latest-small", tmp_path)
    assert (tmp_path / "ml-latest-small" / "ratings.csv").read_text() == "mine"
    with pytest.raises(AssertionError, match="fetched although"):  # --overwrite goes ahead
        ml.download("movielens-latest-small", tmp_path, overwrite=True)


def test_download_never_replaces_an_existing_archive(tmp_path: Path, monkeypatch) -> None:
    """An archive already in dest (not unpacked) is refused before anything is fetched."""
    (tmp_path / "ml-latest-small.zip").write_bytes(b"mine")

    def no_network(*args, **kwargs):
        raise AssertionError("fetched although the archive exists")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(FileExistsError, match=r"ml-latest-small\.zip already exists.*--overwrite"):
        ml.download("movielens-latest-small", tmp_path)
    assert (tmp_path / "ml-latest-small.zip").read_bytes() == b"mine"
    with pytest.raises(AssertionError, match="fetched although"):  # --overwrite goes ahead
        ml.download("movielens-latest-small", tmp_path, overwrite=True)
