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

import hashlib
import os
import time
from pathlib import Path

from layersearch.fitness import Evaluation, spec_key

TARGET = (2, 3, 6)


class LandscapeEvaluator:
    def __init__(self, cfg, marker_dir: str | None = None, delay: float = 0.0,
                 fail_on: tuple[int, ...] | None = None, hold_dir: str | None = None,
                 flaky_on: tuple[int, ...] | None = None):
        self.spec = spec_key(cfg)
        self.flaky_on = flaky_on  # fails the first time only, as out of memory (needs marker_dir)
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
        flag = self.marker_dir / f"flaky-{mapping.key.replace(':', '_')}" if self.marker_dir else None
        if self.flaky_on and tuple(mapping.genes) == tuple(self.flaky_on) and not flag.exists():
            flag.touch()
            return Evaluation(list(mapping.genes), mapping.num_teacher_layers, self.spec,
                              status="failed: OutOfMemoryError: CUDA out of memory (injected)")
        if self.fail_on and tuple(mapping.genes) == tuple(self.fail_on):
            return Evaluation(list(mapping.genes), mapping.num_teacher_layers, self.spec,
                              status="failed: DivergenceError: loss became nan at step 3")
        distance = sum((g - t) ** 2 for g, t in zip(mapping.genes, TARGET, strict=True))
        fitness = 1.0 / (1.0 + distance)
        return Evaluation(list(mapping.genes), mapping.num_teacher_layers, self.spec,
                          fitness=fitness, scores={"landscape": fitness},
                          curves={"distill/total": [(1, 1.0), (2, 1.0 - fitness / 2)]},
                          timings={"total_s": self.delay})


def factory(marker_dir: str | None = None, delay: float = 0.0, fail_on=None, hold_dir: str | None = None,
            flaky_on=None):
    """A picklable factory for EvaluatorPool (Ray ships it to the actors by value)."""
    import functools

    return functools.partial(LandscapeEvaluator, marker_dir=marker_dir, delay=delay, fail_on=fail_on,
                             hold_dir=hold_dir, flaky_on=flaky_on)


class UnitLandscapeEvaluator:
    """A stand-in that keeps units like the real evaluator: per (slice, fine-tune seed) dev
    predictions on two binary tasks, more of them right the closer the mapping is to TARGET,
    with seeded per-unit noise. Each unit it runs leaves a marker file, so tests count fine-tunes;
    it honours ``prior`` (units not run again) and ``units`` (a racing rung's subset)."""

    DEV = 120

    def __init__(self, cfg, marker_dir: str | None = None, noise: float = 0.06, delay: float = 0.0):
        from layersearch.fitness import units_of

        self.delay = delay
        self.cfg = cfg
        self.spec = spec_key(cfg)
        self.every = units_of(cfg)
        self.marker_dir = Path(marker_dir) if marker_dir else None
        self.noise = noise

    def evaluate(self, mapping, prior=None, units=None, progress: bool = False,
                 kind: str = "finetune") -> Evaluation:
        import numpy as np

        from layersearch.fitness import summarize, unit_key
        from layersearch.fitness.record import pack_labels

        wanted = [tuple(u) for u in (units or self.every)]
        labels = {t: np.arange(self.DEV) % 2 for t in self.cfg.tasks.names}
        ev = Evaluation(list(mapping.genes), mapping.num_teacher_layers, self.spec,
                        init=None if mapping.init is None else list(mapping.init),
                        dev_labels={t: pack_labels(y) for t, y in labels.items()},
                        majority={t: 0.5 for t in labels})
        if prior is not None and prior.ok:
            ev.units = {k: v for k, v in prior.units.items() if k in {unit_key(*u) for u in wanted}}
        distance = sum((g - t) ** 2 for g, t in zip(mapping.genes, TARGET, strict=True))
        if mapping.init is not None:  # init genes matter too: closest at TARGET as well
            distance += sum((g - t) ** 2 for g, t in zip(mapping.init, TARGET, strict=True)) / 2
        quality = 0.5 + 0.45 / (1.0 + distance)  # the chance of a right prediction, before noise
        for s, f in wanted:
            key = unit_key(s, f)
            if key in ev.units:
                continue
            time.sleep(self.delay)
            if self.marker_dir is not None:
                self.marker_dir.mkdir(parents=True, exist_ok=True)
                marker = self.marker_dir / f"{kind}-{mapping.key.replace(':', '_')}-{key}"
                if marker.exists():  # a unit run twice leaves a visible twin
                    marker = marker.with_name(marker.name + f".again-{os.getpid()}-{time.time_ns()}")
                marker.write_text(str(os.getpid()))
            # Seeded by content, not hash(): the same unit gives the same noise in every process.
            seed = int(hashlib.sha256(f"{mapping.key}|{s}|{f}".encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(seed)
            p_right = min(0.99, max(0.01, quality + rng.normal(0, self.noise)))
            tasks = {}
            for t, y in labels.items():
                right = rng.random(self.DEV) < p_right
                pred = np.where(right, y, 1 - y)
                tasks[t] = {"predictions": pack_labels(pred), "metrics": {"accuracy": float(right.mean())},
                            "seconds": 0.01, "steps": 1}
            ev.units[key] = {"slice_seed": s, "finetune_seed": f, "distill_s": 0.01, "tasks": tasks}
        ev.timings = {"distill_s": 0.01, "total_s": 0.02}
        return summarize(ev, self.cfg.tasks.names, self.cfg.tasks.weights)

    def evaluate_init(self, mapping, prior=None, units=None, progress: bool = False) -> Evaluation:
        """The untouched init: scored like the mapping that is farthest from TARGET (all 1s),
        recorded under the init's name and spec key, as the real evaluator does."""
        from layersearch.fitness import init_spec_key
        from layersearch.init import init_identity, proxy_init_config
        from layersearch.mapping import Mapping

        worst = Mapping(tuple([1] * len(mapping.genes)), mapping.num_teacher_layers)
        ev = self.evaluate(worst, prior, units, kind="init")  # its fine-tunes counted apart
        ident = init_identity(proxy_init_config(self.cfg), mapping)
        ev.genes, ev.spec_key = list(ident.genes), init_spec_key(self.cfg)
        return ev


def unit_factory(marker_dir: str | None = None, noise: float = 0.06, delay: float = 0.0):
    import functools

    return functools.partial(UnitLandscapeEvaluator, marker_dir=marker_dir, noise=noise, delay=delay)
