"""The on-disk format of a prepared dataset: one uncompressed .npz of arrays and a JSON manifest.

    <dir>/arrays.npz     numpy arrays (int8/int32/int64/uint8), loaded whole into memory
    <dir>/manifest.json  format_version, arrays_sha256, whatever the dataset records (counts,
                         split bounds, vocabularies, source checksums, ...) and manifest_sha256

`arrays_sha256` hashes the arrays' names, dtypes, shapes and bytes (not the .npz file, whose zip
headers carry write times), so preparing the same input twice gives the same digest, and a
truncated, edited or mismatched arrays.npz is caught at load time. `manifest_sha256` hashes every
other manifest entry (canonical JSON), so an edited count, split bound or vocabulary size, which
would move examples between splits or change the feature spec, is caught as well. Format 1 (no
manifest_sha256) is refused with a request to re-run prepare, like any other format version.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kunlun_jax.data.validate import DataError

FORMAT_VERSION = 2  # 2: manifest_sha256
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and contents, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's entries but "manifest_sha256", as canonical JSON (sorted keys;
    round-tripped first, so it is the same for the manifest as written and as read back)."""
    entries = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "manifest_sha256"}))
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def is_prepared(path: Path) -> bool:
    """Whether `path` is a prepared directory (holds a manifest)."""
    return (path / MANIFEST).is_file()


def write(out: Path, arrays: Mapping[str, np.ndarray], manifest: Mapping[str, Any]) -> dict:
    """Writes arrays.npz and manifest.json into `out` (created if needed) and returns the manifest
    as written (with format_version, arrays_sha256 and manifest_sha256). Each file is written
    to a temporary name and renamed, the manifest last, so a crash never leaves a manifest over
    stale arrays."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"format_version": FORMAT_VERSION, **manifest, "arrays_sha256": arrays_sha256(arrays)}
    written["manifest_sha256"] = manifest_sha256(written)
    tmp = out / (ARRAYS + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, out / ARRAYS)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(written, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)
    return written


def read(prepared: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, manifest) of a prepared directory, checked against the manifest's format version,
    manifest_sha256 and arrays_sha256. Raises FileNotFoundError if it is not a prepared directory,
    DataError if a file is corrupt, truncated, of another format version, the manifest was edited
    or the arrays do not match."""
    manifest_path = prepared / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{prepared} is not a prepared dataset (no {MANIFEST}); "
            "run `kunlun-jax data prepare` on the raw files first"
        )
    redo = "re-run `kunlun-jax data prepare` to rebuild it"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{manifest_path} is corrupt or truncated ({e}); {redo}") from e
    if not isinstance(manifest, dict) or "arrays_sha256" not in manifest:
        raise DataError(f"{manifest_path} has no 'arrays_sha256' entry; {redo}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{manifest_path} has format_version {version!r}; this version of kunlun-jax reads "
            f"{FORMAT_VERSION}: {redo}"
        )
    digest, stored = manifest_sha256(manifest), manifest.get("manifest_sha256")
    if stored != digest:
        raise DataError(
            f"{manifest_path} was edited after `kunlun-jax data prepare` wrote it: its entries "
            f"hash to {digest[:12]}…, its manifest_sha256 is {str(stored)[:12]}… (counts, splits "
            f"and vocabularies must come from prepare); {redo}"
        )
    arrays_path = prepared / ARRAYS
    if not arrays_path.is_file():
        raise DataError(f"{arrays_path} is missing; {redo}")
    try:
        with arrays_path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{arrays_path} is corrupt or truncated ({e}); {redo}") from e
    digest = arrays_sha256(arrays)
    if digest != manifest["arrays_sha256"]:
        raise DataError(
            f"checksum mismatch: {arrays_path} has arrays_sha256 {digest[:12]}…, {manifest_path} "
            f"expects {manifest['arrays_sha256'][:12]}…; the files come from different runs or "
            f"were modified: {redo}"
        )
    return arrays, manifest
