"""Result files the CLI writes: an existing file is replaced only when the user asks."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """--overwrite: the command may replace its existing output files."""
    parser.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist"
    )


def refuse_to_replace(paths: Iterable[Path | None], overwrite: bool) -> None:
    """Raises FileExistsError naming the existing files among `paths` (None: not written)
    unless `overwrite`. Call it before the work, so a long run never ends in a refusal."""
    existing = [str(p) for p in paths if p is not None and p.exists()]
    if existing and not overwrite:
        verb, them = ("exists", "it") if len(existing) == 1 else ("exist", "them")
        raise FileExistsError(
            f"{', '.join(existing)} already {verb}: pass --overwrite to replace {them}, or "
            "write elsewhere"
        )


def write_atomically(path: Path, text: str) -> None:
    """path's contents replaced by text all at once (a crash leaves the old file or the new);
    its folder is created if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
