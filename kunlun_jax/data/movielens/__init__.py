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

Modules: `releases` (each release's files and formats), `protocol` (the constants above), `raw`
(reading the files, every row checked), `prepare` (arrays + manifest, and loading them back),
`source` (`MovieLensSource`, `open_source`), `download`. Everything public is importable from
here.
"""

from kunlun_jax.data.movielens.download import download, verify_checksum
from kunlun_jax.data.movielens.prepare import Prepared, build, feature_spec, load, prepare
from kunlun_jax.data.movielens.protocol import (
    AGE_BUCKETS,
    DECADES,
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
    USER_FEATURES,
)
from kunlun_jax.data.movielens.raw import ItemTable, UserTable, read_items, read_users
from kunlun_jax.data.movielens.releases import DATASETS, Dataset, dataset
from kunlun_jax.data.movielens.source import MovieLensSource, open_source

__all__ = [
    "AGE_BUCKETS",
    "DATASETS",
    "DECADES",
    "DEFAULT_MAX_LEN",
    "DEFAULT_TASKS",
    "HISTORY_FEATURES",
    "ITEM_FEATURES",
    "LIKE_HALF_STARS",
    "OOV",
    "PAD",
    "SPLITS",
    "SPLIT_QUANTILES",
    "STREAMS",
    "TASK_HALF_STARS",
    "USER_FEATURES",
    "Dataset",
    "ItemTable",
    "MovieLensSource",
    "Prepared",
    "UserTable",
    "build",
    "dataset",
    "download",
    "feature_spec",
    "load",
    "open_source",
    "prepare",
    "read_items",
    "read_users",
    "verify_checksum",
]
