"""Fetching a release from GroupLens (needs internet; never called by the tests)."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

from kunlun_jax.data.movielens.releases import dataset
from kunlun_jax.data.validate import DataError


def verify_checksum(path: Path, expected: str, algorithm: str = "sha256") -> str:
    """The hex digest of a file; DataError if it differs from `expected` (md5, sha256, ...)."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    if digest != expected.lower():
        raise DataError(
            f"{path}: {algorithm} {digest} does not match the expected {expected}; the file is "
            "corrupt or changed upstream: delete it and download again"
        )
    return digest


def download(name: str, dest: Path, *, overwrite: bool = False) -> Path:
    """Downloads MovieLens `name` from GroupLens into `dest`, checks the zip's md5 (GroupLens'
    published value; ml-latest-small changes between builds, so it has none), unpacks it and
    returns the unpacked directory, ready for `prepare`. An unpacked directory or a zip already
    in `dest` is an error before anything is fetched, unless `overwrite`. ML-100K and ML-1M may
    not be redistributed: keep them out of repositories and wheels (see the README inside)."""
    ds = dataset(name)
    dest = Path(dest)
    archive = dest / ds.url.rsplit("/", 1)[1]
    for path, keep in (
        (dest / ds.archive_dir, "prepare it as it is"),
        (archive, "move or delete it"),
    ):
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"{path} already exists; {keep}, or pass --overwrite to download it again over it"
            )
    dest.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".part")
    with urllib.request.urlopen(ds.url, timeout=60) as response, partial.open("wb") as f:
        shutil.copyfileobj(response, f)
    if ds.md5:
        verify_checksum(partial, ds.md5, "md5")
    os.replace(partial, archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
    return dest / ds.archive_dir
