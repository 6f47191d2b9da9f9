"""Result files name the code that made them: the git commit and whether it had changes."""

from __future__ import annotations

import re
import subprocess

import pytest

from kunlun_jax import provenance
from kunlun_jax.bench.schema import ENVIRONMENT


@pytest.fixture
def fresh_version(monkeypatch):
    """code_version() recomputed (it is cached per process), with no commit in the environment."""
    monkeypatch.delenv(provenance.COMMIT_VARIABLE, raising=False)
    provenance.code_version.cache_clear()
    yield
    provenance.code_version.cache_clear()


def test_a_checkout_names_its_head_and_whether_tracked_files_changed(fresh_version):
    head = subprocess.run(
        ["git", "-C", str(provenance._CHECKOUT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
    )
    if head.returncode:
        pytest.skip("not run from a git checkout")
    version = provenance.code_version()
    assert version["commit"] == head.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", version["commit"])
    assert isinstance(version["dirty"], bool)
    env = provenance.environment()
    assert (env["commit"], env["dirty"]) == (version["commit"], version["dirty"])
    assert {"commit", "dirty"} <= set(ENVIRONMENT)


@pytest.mark.parametrize(
    ("named", "commit", "dirty"),
    [("abc123", "abc123", False), ("abc123-dirty", "abc123", True), ("", None, None)],
)
def test_a_copied_tree_names_the_commit_it_was_given(
    fresh_version, monkeypatch, tmp_path, named, commit, dirty
):
    """A device machine's copy of the checkout has no .git: KUNLUN_JAX_COMMIT names it."""
    monkeypatch.setattr(provenance, "_CHECKOUT", tmp_path)  # not a git checkout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # nor inside one
    monkeypatch.setenv(provenance.COMMIT_VARIABLE, named)
    assert provenance.code_version() == dict(commit=commit, dirty=dirty)
