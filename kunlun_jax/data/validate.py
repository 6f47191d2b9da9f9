"""Validation at the raw-data boundary: errors that name the file, line and field, or counted skips.

Readers of raw files go through `read_table`, which checks that the file exists, is not empty,
decodes, has the expected header (CSV) and the expected number of fields per row. Field checks
raise `RowError`; the caller hands it to `Report.reject`, which either raises a `DataError`
(on_error="raise", the default) or drops the row and counts it (on_error="skip"), so that a
prepared dataset records how many rows of which file were dropped and why.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """Raw or prepared data is invalid; the message names the file (line, field) and the fix."""


class RowError(ValueError):
    """One field of one row is invalid. `kind` is a short reason used to count skipped rows."""

    def __init__(self, field: str, reason: str, kind: str):
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason
        self.kind = kind


class Report:
    """What happens to invalid rows: raise a DataError, or skip them and count them per file."""

    def __init__(self, on_error: OnError = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: dict[str, dict[str, int]] = {}  # file name -> "field: kind" -> rows
        self.first: dict[str, str] = {}  # file name -> message of its first skipped row

    def reject(self, path: Path, line: int, error: RowError) -> None:
        """Raises DataError for an invalid row (on_error="raise"), else counts it as skipped."""
        message = f"{path}, line {line}, {error}"
        if self.on_error == "raise":
            raise DataError(
                f"{message} (on_error='skip', `--on-error skip` of `data prepare`, drops such "
                "rows and counts them)"
            )
        counts = self.skipped.setdefault(path.name, {})
        key = f"{error.field}: {error.kind}"
        counts[key] = counts.get(key, 0) + 1
        self.first.setdefault(path.name, message)

    @property
    def total(self) -> int:
        """Rows skipped so far, over all files."""
        return sum(sum(c.values()) for c in self.skipped.values())


def read_table(
    path: Path,
    columns: Sequence[str],
    *,
    sep: str,
    report: Report,
    encoding: str = "utf-8",
    header: bool = False,
    max_rows: int | None = None,
) -> Iterator[tuple[int, list[str]]]:
    """The data rows of a delimited text file as (1-based line number, len(columns) fields).

    sep="," parses CSV (quoted fields allowed); other separators (tab, "|", "::") split lines
    literally. With `header`, the first line must list exactly `columns`. Rows with another
    number of fields go to `report`; at most `max_rows` data rows are read.

    Raises FileNotFoundError if the file is missing, DataError if it is empty, does not decode,
    has a wrong header or no data rows.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path} is empty; expected rows of {sep.join(columns)!r}")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid {encoding} text ({e.reason})") from e
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    lines = [s[:-1] if s.endswith("\r") else s for s in lines]
    rows = csv.reader(lines) if sep == "," else (s.split(sep) for s in lines)
    first = 1
    if header:
        got = next(rows)
        if got != list(columns):
            unknown = [c for c in got if c not in columns]
            missing = [c for c in columns if c not in got]
            raise DataError(
                f"{path}, line 1: header {sep.join(got)!r} does not match the expected "
                f"{sep.join(columns)!r} (unknown columns {unknown}, missing {missing}); "
                "is this the right file and format?"
            )
        first = 2
    n = 0
    for line, fields in enumerate(rows, start=first):
        if max_rows is not None and n >= max_rows:
            return
        n += 1
        if len(fields) != len(columns):
            report.reject(
                path,
                line,
                RowError(
                    "row",
                    f"has {len(fields)} fields, expected {len(columns)} ({sep.join(columns)})",
                    "wrong column count",
                ),
            )
            continue
        yield line, fields
    if n == 0:
        raise DataError(f"{path} has no data rows")


def to_int(text: str, field: str, lo: int | None = None, hi: int | None = None) -> int:
    """`text` as an integer in [lo, hi] (bounds optional); RowError otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise RowError(field, f"{text!r} is not an integer", "not an integer") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{'' if lo is None else lo}, {'' if hi is None else hi}]"
        raise RowError(field, f"{value} is outside {bounds}", "out of range")
    return value


def to_float(text: str, field: str) -> float:
    """`text` as a finite float; RowError otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise RowError(field, f"{text!r} is not a number", "not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise RowError(field, f"{text!r} is not finite", "not a number")
    return value
