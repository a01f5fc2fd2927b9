"""The init baseline: the student before distillation, scored as the distilled one is.

A distilled student's fitness minus its untouched init's, paired by unit and
dev example, is its *distillation gain* (``aggregate.distillation_gain``). A
proxy whose gain is not above zero ranks which supervision damages the
copied init least, not which mapping teaches best. The helpers here fetch or
make the init's evaluation (one per init: shared by every mapping where
``proxy.init_layers`` is fixed), log it, and log each evaluation's gain;
``evaluate``, ``compare``, ``search`` and ``confirm`` use them alike.
"""

from __future__ import annotations

from collections.abc import Callable

from layersearch.fitness.aggregate import distillation_gain, gain_word
from layersearch.fitness.record import Evaluation
from layersearch.mapping import Mapping


def baseline_run(cache, ident: Mapping, units: list, tasks, run_init: Callable, tracker, parent_id: str | None,
                 use_cache: bool = True, say: Callable[[str], None] = print) -> Evaluation:
    """The init baseline's evaluation of ``ident``: read from ``cache`` or made by
    ``run_init(prior)`` (and cached), and logged as one MLflow run (kind ``init-baseline``)."""
    from layersearch.tracking import log_evaluation

    hit, partial = cache.lookup(ident, units, tasks.scored, tasks.scored_weights) if use_cache else (None, None)
    state = "cached" if hit is not None else "evaluating ..."
    say(f"init baseline {ident} (the untouched student): {state}")
    with tracker.run(f"init {ident}", parent_id=parent_id,
                     tags={"layersearch.kind": "init-baseline"}) as run_id:
        ev = hit
        if ev is None:
            ev = run_init(partial)
            cache.put(ev)
        log_evaluation(tracker, run_id, ev, cached=hit is not None)
    return ev


def attach_gains(tasks, results: list, run_ids: list[str], init_for: Callable, tracker,
                 say: Callable[[str], None] = print) -> dict:
    """Each evaluation's distillation gain over its init (``init_for(evaluation)``), logged on its
    run: metrics ``gain``, ``gain_ci_low``, ``gain_ci_high`` and tag ``distillation_gain``."""
    gains = {}
    for (label, ev), run_id in zip(results, run_ids, strict=True):
        if not ev.ok or not ev.units:
            continue
        init = init_for(ev)
        if not init.ok:
            say(f"init baseline {init.mapping}: {init.status}")
            continue
        g = gains[label] = distillation_gain(ev, init, tasks.scored, tasks.scored_weights)
        tracker.log_metrics(run_id, {"gain": g.mean, "gain_ci_low": g.low, "gain_ci_high": g.high})
        tracker.set_tags(run_id, {"distillation_gain": gain_word(g)})
    return gains
