"""The trainer's extension points, as one explicit protocol.

A callback subclasses ``TrainerCallback`` and overrides what it needs; every
method of the base does nothing. ``train`` calls them in a fixed order each
step: ``extra_terms`` inside the forward pass (named loss terms added to the
total, e.g. WID's MLM loss), ``after_step`` after the optimizer step (may
change weights, e.g. WID's proximal step, and returns values to log),
``on_step`` with the step's logged values (averaged over workers), and
``should_stop`` (any worker asking stops every worker at the same step, after
a checkpoint: preemption).

A loss module that is itself a ``TrainerCallback`` (``wid.WIDLoss``) takes part
without being listed.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from torch import Tensor, nn


class TrainerCallback:
    def extra_terms(self, student: nn.Module, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {}

    def after_step(self, step: int, steps: int) -> dict[str, float]:
        return {}

    def on_step(self, step: int, steps: int, logs: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class StepHook(TrainerCallback):
    """A plain ``fn(step, logs)`` called every step (tests, benches)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def on_step(self, step: int, steps: int, logs: dict[str, float]) -> None:
        self.fn(step, logs)


class StopAfter(TrainerCallback):
    """Stop after ``step`` as a crash would, but with a checkpoint (resume tests)."""

    def __init__(self, step: int) -> None:
        self.step, self.now = step, 0

    def on_step(self, step: int, steps: int, logs: dict[str, float]) -> None:
        self.now = step

    def should_stop(self) -> bool:
        return self.now >= self.step


class StopOnSignal(TrainerCallback):
    """Preemption: SIGTERM (or a stop file the driver writes) ends the run at the next step.

    The handler only sets a flag: the trainer finishes the step, every worker
    agrees to stop, the checkpoint is written and the run is reported as
    stopped. A second SIGTERM is not caught again, so a stuck run can still be
    killed. The stop file is how a driver reaches workers in other processes.
    """

    def __init__(self, stop_file: str | Path | None = None) -> None:
        self.stop_file = Path(stop_file) if stop_file else None
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def should_stop(self) -> bool:
        if not self.requested and self.stop_file is not None and self.stop_file.exists():
            self.requested = True
        return self.requested

    def close(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _write_line(line: str) -> None:
    # Not print(): Ray Train patches print in its workers and each line would reach the user twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLine(TrainerCallback):
    """One line every ``every_s`` seconds (and at the end): step, loss, tokens/s, ETA.

    Plain lines rather than a redrawn bar, since the main worker's output often
    reaches the user through Ray's log forwarding or a batch log.
    """

    def __init__(self, tokens_per_step: int, start_step: int = 0, every_s: float = 10.0,
                 printer=None) -> None:
        self.tokens_per_step, self.start_step = tokens_per_step, start_step
        self.every_s, self.printer = every_s, printer or _write_line
        self.began = time.perf_counter()
        self.last = 0.0

    def on_step(self, step: int, steps: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and step != steps:
            return
        self.last = now
        done, elapsed = step - self.start_step, now - self.began
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (steps - step) / rate if rate > 0 else 0.0
        self.printer(f"distill step {step}/{steps} | loss {logs.get('total', float('nan')):.4f} | "
                     f"{rate * self.tokens_per_step:,.0f} tokens/s | elapsed {_clock(elapsed)} "
                     f"ETA {_clock(eta)}")
