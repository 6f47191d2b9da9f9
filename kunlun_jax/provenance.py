"""Where a number came from: device, library versions, code version, date and command, for
result JSON."""

from __future__ import annotations

import datetime
import functools
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jax

# A copied source tree without .git (a device machine's copy of the checkout) names its commit
# here: "<sha>" or "<sha>-dirty" (benchmarks/device_wheels.sh records it, gpu_session.sh
# exports it).
COMMIT_VARIABLE = "KUNLUN_JAX_COMMIT"
_CHECKOUT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    """stdout of `git args` in the checkout the package was imported from; None where that is
    no git checkout (an installed wheel, a copied tree) or git is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(_CHECKOUT), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def code_version() -> dict[str, object]:
    """The kunlun-jax code that ran: `commit` (git sha) and `dirty` (tracked files differed from
    it), from the checkout, else from $KUNLUN_JAX_COMMIT; both None where neither says."""
    commit = _git("rev-parse", "HEAD")
    if commit is not None:
        changes = _git("status", "--porcelain", "--untracked-files=no")
        return dict(commit=commit, dirty=None if changes is None else bool(changes))
    named = os.environ.get(COMMIT_VARIABLE, "").strip()
    if not named:
        return dict(commit=None, dirty=None)
    sha, _, state = named.partition("-")
    return dict(commit=sha, dirty=state == "dirty")


def environment() -> dict[str, object]:
    """Device kind/platform/count, jax/jaxlib/flax/tokamax/python versions, the code's commit
    (and whether it had uncommitted changes), UTC date, command."""
    device = jax.devices()[0]
    return dict(
        device_kind=device.device_kind,
        platform=device.platform,
        device_count=jax.device_count(),
        jax=jax.__version__,
        jaxlib=metadata.version("jaxlib"),
        flax=metadata.version("flax"),
        tokamax=metadata.version("tokamax"),
        python=sys.version.split()[0],
        **code_version(),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        # As run (`-m module` kept: sys.argv has the module's file path instead, which does
        # not run the same way), quoted: pastes back into a shell.
        command=shlex.join([sys.executable, *sys.orig_argv[1:]]),
    )
