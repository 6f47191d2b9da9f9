"""Which implementation each public op ran while a program was traced.

`backend="auto"` picks per platform, head dim and shape, and falls back to the reference
(SWA also when tokamax refuses a case), so a benchmark's numbers need the record of what ran:
`with recording() as ran: <trace>` counts (op, implementation) per traced call.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
from collections.abc import Iterator

_COUNTS: contextvars.ContextVar[collections.Counter | None] = contextvars.ContextVar(
    "kernel_dispatch", default=None
)


@contextlib.contextmanager
def recording() -> Iterator[collections.Counter]:
    """A Counter of (op, implementation) for every public op call traced inside."""
    counts: collections.Counter = collections.Counter()
    token = _COUNTS.set(counts)
    try:
        yield counts
    finally:
        _COUNTS.reset(token)


def record(op: str, impl: str) -> None:
    """Count one traced call of `op` ("gdpa", "attention", "seed_pooling") that ran `impl`."""
    if (counts := _COUNTS.get()) is not None:
        counts[(op, impl)] += 1


def describe(counts: collections.Counter) -> str:
    """ "op: impl × n, ..." sorted by op, for a record's notes."""
    return ", ".join(f"{op}: {impl} × {n}" for (op, impl), n in sorted(counts.items()))
