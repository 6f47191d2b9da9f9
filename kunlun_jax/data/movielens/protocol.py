"""How MovieLens ratings become examples: splits, labels, streams, features, reserved ids
(the package docstring describes the protocol)."""

from __future__ import annotations

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
