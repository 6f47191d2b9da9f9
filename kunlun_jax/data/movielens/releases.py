"""The MovieLens releases (100K, 1M, latest-small): their files, formats and where to fetch them."""

from __future__ import annotations

import dataclasses

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
