"""Graceful preemption: SIGTERM / SIGINT ask the loop to finish its step, save and exit.

Cluster schedulers send SIGTERM before killing a job (Kubernetes, SLURM, Cloud TPU
maintenance). A second SIGINT (Ctrl-C twice) interrupts at once. With several processes the
request is agreed on by all of them (`any_process`), so every host saves the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from kunlun_jax.parallel.distributed import any_process

# A preempted `kunlun-jax train` exits with this code (EX_TEMPFAIL): "try again" -- resume.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """A training in a study or sweep stopped for a preemption signal after saving a
    checkpoint; running the same command again resumes it (the CLI exits PREEMPTED_EXIT_CODE)."""

    def __init__(self, run_dir: object, step: int, signum: int | None):
        super().__init__(
            f"{run_dir}: preempted by signal {signum} after step {step}, checkpoint saved; run "
            "the same command again to resume it"
        )


class PreemptionGuard:
    """Context manager: while active, SIGTERM/SIGINT set a flag instead of killing."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self._signals = signals
        self._previous: dict[int, object] = {}
        self.signal: int | None = None

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():  # handlers need the main thread
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def requested(self) -> bool:
        """Whether any process got a signal (a collective call when multi-process)."""
        return any_process(self.signal is not None)
