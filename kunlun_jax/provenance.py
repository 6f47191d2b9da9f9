"""Where a number came from: device, library versions, date and command, for result JSON."""

from __future__ import annotations

import datetime
import shlex
import sys
from importlib import metadata

import jax


def environment() -> dict[str, object]:
    """Device kind/platform/count, jax/jaxlib/flax/tokamax/python versions, UTC date, command."""
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
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        # As run (`-m module` kept: sys.argv has the module's file path instead, which does
        # not run the same way), quoted: pastes back into a shell.
        command=shlex.join([sys.executable, *sys.orig_argv[1:]]),
    )
