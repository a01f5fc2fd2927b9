"""A cheap stand-in for the proxy evaluator, for tests of the search machinery only.

Fitness is a known landscape (closeness to a target mapping), so the GA's
answer is checkable; each real evaluation leaves a marker file, so tests can
count how many evaluations actually ran and spot any that ran twice.

With a ``hold_dir``, tests of lost workers can also hold evaluations: every
evaluator announces itself in ``<hold_dir>/evaluators/<pid>`` when it is
built, and while ``<hold_dir>/hold`` exists an evaluation waits before
finishing, saying so with a ``held-<pid>`` file. A test can then wait until a
replacement evaluator has really taken work instead of racing it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from layersearch.fitness import Evaluation, spec_key

TARGET = (2, 3, 6)


class LandscapeEvaluator:
    def __init__(self, cfg, marker_dir: str | None = None, delay: float = 0.0,
                 fail_on: tuple[int, ...] | None = None, hold_dir: str | None = None):
        self.spec = spec_key(cfg)
        self.marker_dir = Path(marker_dir) if marker_dir else None
        self.delay = delay
        self.fail_on = fail_on
        self.hold_dir = Path(hold_dir) if hold_dir else None
        if self.hold_dir is not None:
            (self.hold_dir / "evaluators").mkdir(parents=True, exist_ok=True)
            (self.hold_dir / "evaluators" / str(os.getpid())).touch()

    def _wait_while_held(self) -> None:
        hold = self.hold_dir / "hold"
        if not hold.exists():
            return
        (self.hold_dir / f"held-{os.getpid()}").touch()
        deadline = time.monotonic() + 300
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def evaluate(self, mapping) -> Evaluation:
        time.sleep(self.delay)
        if self.hold_dir is not None:
            self._wait_while_held()
        if self.marker_dir is not None:
            self.marker_dir.mkdir(parents=True, exist_ok=True)
            marker = self.marker_dir / mapping.key.replace(":", "_")
            # A second evaluation of the same mapping leaves a visible twin.
            if marker.exists():
                marker = marker.with_name(marker.name + f".again-{os.getpid()}-{time.time_ns()}")
            marker.write_text(str(os.getpid()))
        if self.fail_on and tuple(mapping.genes) == tuple(self.fail_on):
            return Evaluation(list(mapping.genes), mapping.num_teacher_layers, self.spec,
                              status="failed: DivergenceError: loss became nan at step 3")
        distance = sum((g - t) ** 2 for g, t in zip(mapping.genes, TARGET, strict=True))
        fitness = 1.0 / (1.0 + distance)
        return Evaluation(list(mapping.genes), mapping.num_teacher_layers, self.spec,
                          fitness=fitness, scores={"landscape": fitness},
                          curves={"distill/total": [(1, 1.0), (2, 1.0 - fitness / 2)]},
                          timings={"total_s": self.delay})


def factory(marker_dir: str | None = None, delay: float = 0.0, fail_on=None, hold_dir: str | None = None):
    """A picklable factory for EvaluatorPool (Ray ships it to the actors by value)."""
    import functools

    return functools.partial(LandscapeEvaluator, marker_dir=marker_dir, delay=delay, fail_on=fail_on,
                             hold_dir=hold_dir)
