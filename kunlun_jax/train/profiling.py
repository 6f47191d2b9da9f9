"""Device traces of chosen train steps (`train.profile_steps`), for xprof / TensorBoard.

`jax.profiler` writes `<log dir>/plugins/profile/<time>/<host>.xplane.pb` (and a Perfetto
`trace.json.gz`): the layout xprof (`xprof --logdir DIR`) and TensorBoard's profile plugin read.
With several processes each traces into its own `process_<i>/` below the log dir. jax's Python
tracer is off (`profile_options`).
Training traces into the run's `tb/` directory, beside its scalars. Each step runs under a
`StepTraceAnnotation`, so xprof's step-time breakdown (compute, collectives, host waits) sees
the steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax


def trace_dir(log_dir: Path) -> Path:
    """Where this process writes its trace: `log_dir`, or `log_dir/process_<i>` when several
    processes run (trace files are named by host, and one host may run several processes)."""
    log_dir = Path(log_dir)
    return log_dir / f"process_{jax.process_index()}" if jax.process_count() > 1 else log_dir


def profile_options() -> jax.profiler.ProfileOptions:
    """jax's defaults without its Python tracer: every Python call of every thread (the data
    pipeline's included) would be an event, which made a CPU trace of two `tiny` steps take
    19 s more than the steps; XLA's ops, host annotations and devices are all kept."""
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    return options


class StepProfiler:
    """Traces train steps [start, stop) (`steps`: () = none, else (start, stop)) into
    `log_dir`, from the first of them at or after `first_step` (a resumed run traces what is
    left of the window). Tracing stops once the last traced step's outputs are ready."""

    def __init__(self, steps: Sequence[int], log_dir: Path, first_step: int):
        window = range(*steps) if steps else range(0)
        self.begin = max(window.start, first_step) if window else None
        self.stop_after = window.stop - 1 if window else None
        self.log_dir = trace_dir(log_dir)
        self.active = False

    @property
    def traces(self) -> bool:
        """Whether some step of the window is still to run."""
        return self.begin is not None and self.begin <= self.stop_after

    def annotate(self, step: int) -> Any:
        """Context manager around step `step`: starts the trace at the window's first step and
        marks the step for xprof."""
        if self.traces and step == self.begin:
            jax.profiler.start_trace(str(self.log_dir), profiler_options=profile_options())
            self.active = True
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def step_done(self, step: int, outputs: Any) -> bool:
        """After step `step` was dispatched: at the window's last step, waits for `outputs` and
        stops the trace. Returns whether it stopped."""
        if not self.active or step != self.stop_after:
            return False
        jax.block_until_ready(outputs)
        self.close()
        return True

    def close(self) -> None:
        """Stops a trace still running (the run ended or was interrupted inside the window)."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
