"""`python -m tests.parallel.bad_batch_on_one_host <kunlun-jax CLI arguments>`: the CLI with an
id out of range in process 1's first training batch (every other batch intact). For
test_multiprocess.py: every process must stop with an error naming the batch, none may wait
in a collective for the one that stopped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import jax

import kunlun_jax.train.experiment as experiment
from kunlun_jax.cli import main
from kunlun_jax.data.spec import Batch


class CorruptedAt:
    """A training data iterator whose batch number `index` has sparse id -1 in row 0; the
    rest (batches, checkpointable state) is the wrapped iterator's."""

    def __init__(self, batches: Iterator[Batch], index: int):
        self._batches, self._index, self._served = batches, index, 0

    def __next__(self) -> Batch:
        batch = next(self._batches)
        if self._served == self._index:
            batch["sparse"] = batch["sparse"].copy()
            batch["sparse"][0, 0] = -1
        self._served += 1
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batches, name)


_train_iterator = experiment.train_iterator


def first_batch_corrupted_on_process_1(*args: Any, **kwargs: Any) -> Any:
    batches = _train_iterator(*args, **kwargs)
    return CorruptedAt(batches, 0) if jax.process_index() == 1 else batches


if __name__ == "__main__":
    experiment.train_iterator = first_batch_corrupted_on_process_1  # what build_experiment calls
    sys.exit(main(sys.argv[1:]))
