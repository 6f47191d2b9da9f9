"""The MXU blocks of a compiled TPU kernel read from its VLIW schedule: bundles and unit load.

The TPU compiler (libtpu, no TPU needed) schedules a Mosaic kernel into VLIW bundles, one
issued per cycle when nothing stalls. With `--xla_jf_dump_to=DIR --xla_jf_dump_llo_text=true`
in LIBTPU_INIT_ARGS it writes, per kernel, the final schedule (`*-final_bundles.txt`) and each
bundle's use of the core's units (`*-final_hlo-static-per-bundle-utilization.txt`: MXU, XLU,
VALU, VPOP, EUP, VLOAD, VLOAD:FILL, VSTORE, VSTORE:SPILL, SALU, with their per-bundle
capacities). An MXU block is a straight-line run of bundles (no branch in or out) holding
matrix-unit pushes (`vmatmul*`): in an attention kernel, the tile computation of a grid step,
one block per variant (e.g. wholly visible and masked tiles). Per block this reports its
bundles, each unit's load, its pushes per MXU, and the bundles each unit needs at its
capacity: a block issues in no fewer bundles than its busiest unit needs.
`fewest_step_bundles` adds the rest of a grid step: the fewest bundles one trip around the
kernel's grid loop takes through a given block. Parse a listing once (`parse_bundles`) and
pass its bundles to both.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path

_BUNDLE_START = re.compile(r"^\s*(?:0x[0-9a-f]+|\d+)\s+(?:([A-Z]{2}):)?\s*:?\s*>?\s*\{")
_OPCODE = re.compile(r"^\s*%\w+\s*=\s*([a-z][\w.]*)")
_REGION_START = re.compile(r"Start(?:/End empty)? region (\d+)")
_BRANCH_TARGET = re.compile(r"\bsbr\.\w+\b.*?target = \$region(\d+)")
_MXU = re.compile(r"\.mxu(\d+)\b")
# Bundle tags that are branch targets (the listing's control-target key): loop header / body /
# exit, predicated-region fallthrough, control target.
_TARGET_TAGS = {"LH", "LB", "LE", "PF", "CT"}


@dataclasses.dataclass(frozen=True)
class Bundle:
    """One VLIW bundle: its branch-target tag ('' if none), the opcodes it issues, the regions
    that start at it and the region its (conditional) branch jumps to, if any."""

    tag: str
    opcodes: tuple[str, ...]
    regions: tuple[int, ...] = ()
    branch_to: int | None = None


@dataclasses.dataclass(frozen=True)
class MxuBlock:
    """A straight-line run of bundles with MXU pushes (see the module docstring)."""

    first: int  # index of its first bundle in the listing
    bundles: int
    load: dict[str, int]  # unit -> operations issued in the block
    capacity: dict[str, int]  # unit -> operations a bundle can issue
    pushes: dict[int, int]  # MXU number -> vmatmul pushes
    opcodes: dict[str, int]  # opcode -> how many the block issues

    def unit_bundles(self, unit: str) -> int:
        """Bundles `unit` needs for its load at full capacity."""
        return -(-self.load[unit] // self.capacity[unit])

    def busiest_unit(self, exclude: tuple[str, ...] = ("MXU",)) -> str:
        """The non-MXU unit that needs the most bundles."""
        units = [u for u in self.load if u not in exclude]
        return max(units, key=self.unit_bundles)


def parse_bundles(listing: str) -> list[Bundle]:
    """The bundles of a `*-final_bundles.txt` listing in program order (a bundle's comments
    may run over several lines)."""
    starts, texts = [], []
    for line in listing.splitlines():
        if m := _BUNDLE_START.match(line):
            starts.append(m[1] or "")
            texts.append(line[m.end() :])
        elif texts and line.strip():
            texts[-1] += "\n" + line
    bundles = []
    for tag, text in zip(starts, texts, strict=True):
        body, _, comment = text.rpartition("}")
        ops = (o[1] for part in body.split(";;") if (o := _OPCODE.match(part)))
        regions = tuple(int(r) for r in _REGION_START.findall(comment))
        branch = _BRANCH_TARGET.search(body)
        bundles.append(Bundle(tag, tuple(ops), regions, int(branch[1]) if branch else None))
    return bundles


def parse_utilization(text: str) -> tuple[dict[str, int], list[list[int]]]:
    """(unit -> capacity, per-bundle loads) of a `*-static-per-bundle-utilization.txt`."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    header = next(i for i, words in enumerate(lines) if words[0] == "==" and "CAPAC" in words[1])
    units = [u.rstrip(",") for u in lines[header + 1]]
    capacity = dict(zip(units, map(int, lines[header + 2]), strict=True))
    rows = [list(map(int, words)) for words in lines[header + 4 :] if words[0].isdigit()]
    return capacity, rows


def straight_runs(bundles: list[Bundle]) -> list[range]:
    """Bundle index ranges with no branch target after their first bundle and no branch
    before their last."""
    starts = _region_starts(bundles)
    targets = {i for i, b in enumerate(bundles) if b.tag in _TARGET_TAGS}
    targets |= {starts[b.branch_to] for b in bundles if b.branch_to in starts}
    runs, start = [], 0
    for i, bundle in enumerate(bundles):
        if i > start and i in targets:
            runs.append(range(start, i))
            start = i
        if bundle.branch_to is not None or any(op.startswith("sbr") for op in bundle.opcodes):
            runs.append(range(start, i + 1))
            start = i + 1
    if start < len(bundles):
        runs.append(range(start, len(bundles)))
    return runs


def _region_starts(bundles: list[Bundle]) -> dict[int, int]:
    """Region number -> index of the bundle it starts at."""
    starts: dict[int, int] = {}
    for i, bundle in enumerate(bundles):
        for region in bundle.regions:
            starts.setdefault(region, i)
    return starts


def fewest_step_bundles(
    bundles: list[Bundle], loop_of: int, via: int | None = None, avoid: tuple[int, ...] = ()
) -> int:
    """The fewest bundles one trip around the loop holding bundle `loop_of` can issue, through
    bundle `via` (if given) and through none of the bundles in `avoid`, every conditional
    region the trip can skip (a grid step's first-step init, last-step finish, DMA issue for a
    block that did not change) skipped. Branches are conditional (`sbr.rel (p)`); the loop is
    the innermost one whose body, from its LB bundle to its backward branch, holds `loop_of`.
    """
    runs = straight_runs(bundles)
    run_of = {i: n for n, run in enumerate(runs) for i in run}
    starts = _region_starts(bundles)
    back_edges = [
        (run_of[starts[b.branch_to]], n)
        for n, run in enumerate(runs)
        if (b := bundles[run[-1]]).branch_to is not None and starts[b.branch_to] <= run[-1]
    ]
    inside = [(head, tail) for head, tail in back_edges if head <= run_of[loop_of] <= tail]
    if not inside:
        raise ValueError(f"bundle {loop_of} is in no loop")
    first, last = min(inside, key=lambda edge: edge[1] - edge[0])
    banned = {run_of[i] for i in avoid}
    must = None if via is None else run_of[via]
    # Forward edges only: the fewest bundles from `first` to each run (through `must`).
    cost = {first: len(runs[first])}
    for n in range(first, last + 1):
        if n not in cost or n in banned:
            continue
        if n == must:
            cost = {n: cost[n]}  # drop the trips that jumped past it
        successors = [n + 1] if n < last else []
        if (target := bundles[runs[n][-1]].branch_to) is not None:
            successors.append(run_of[starts[target]])
        for m in successors:
            if n < m <= last and m not in banned:
                cost[m] = min(cost.get(m, 1 << 30), cost[n] + len(runs[m]))
    if last not in cost or (must is not None and not first <= must <= last):
        raise ValueError(f"no trip around the loop through bundle {via} avoiding {avoid}")
    return cost[last]


def mxu_blocks(bundles: list[Bundle], utilization: str) -> tuple[MxuBlock, ...]:
    """The MXU blocks of one kernel's parsed listing and its utilization dump, in program
    order."""
    capacity, rows = parse_utilization(utilization)
    if len(rows) != len(bundles):
        raise ValueError(f"{len(bundles)} bundles but {len(rows)} utilization rows")
    blocks = []
    for run in straight_runs(bundles):
        pushes = Counter(
            int(m[1])
            for i in run
            for op in bundles[i].opcodes
            if op.startswith("vmatmul") and (m := _MXU.search(op))
        )
        if pushes:
            load = {u: sum(rows[i][j] for i in run) for j, u in enumerate(capacity)}
            by_mxu = dict(sorted(pushes.items()))
            opcodes = dict(Counter(op for i in run for op in bundles[i].opcodes).most_common())
            blocks.append(MxuBlock(run.start, len(run), load, capacity, by_mxu, opcodes))
    return tuple(blocks)


def kernel_dumps(dump_dir: Path, kernel: str) -> list[tuple[str, str]]:
    """(final bundles, utilization) texts of every compile of `kernel` (its Pallas name) in a
    libtpu dump directory, oldest first."""
    pairs = []
    for listing in sorted(dump_dir.glob(f"*{kernel}*-final_bundles.txt")):
        prefix = listing.name.split("-final_bundles.txt")[0].rsplit("-", 1)[0]
        (util,) = dump_dir.glob(f"{prefix}-*-final_hlo-static-per-bundle-utilization.txt")
        pairs.append((listing.read_text(), util.read_text()))
    return pairs
