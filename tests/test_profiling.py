"""The train-step trace window and where each process writes its trace (the traces themselves:
tests/test_train.py and tests/test_bench_smoke.py)."""

import jax
import pytest

from kunlun_jax.train.profiling import StepProfiler, trace_dir


@pytest.mark.parametrize(
    ("window", "first_step", "traced"),
    [
        ((), 0, None),
        ((4, 8), 0, (4, 7)),
        ((4, 8), 6, (6, 7)),
        ((4, 8), 7, (7, 7)),
        ((4, 8), 8, None),
    ],
)
def test_a_run_traces_what_is_left_of_the_window(tmp_path, window, first_step, traced):
    profiler = StepProfiler(window, tmp_path, first_step)
    assert profiler.traces == (traced is not None)
    if traced is not None:
        assert (profiler.begin, profiler.stop_after) == traced


def test_each_process_traces_into_its_own_folder(tmp_path, monkeypatch):
    assert trace_dir(tmp_path) == tmp_path
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    monkeypatch.setattr(jax, "process_index", lambda: 2)
    assert trace_dir(tmp_path) == tmp_path / "process_2"
