"""Proxy fitness of given mappings: ``evaluate`` (mappings a user names) and ``baselines``.

Each evaluation is one MLflow run (genes as params, per-task scores and
fitness as metrics, loss curves). Results are cached by (proxy spec, mapping):
a mapping evaluated before, here or by a search with the same proxy spec, is
read back instead of re-run (``use_cache=False`` forces a fresh evaluation).
"""

from __future__ import annotations

import random

from layersearch.config import Config
from layersearch.workflows.progress import Say, sink
from layersearch.workflows.results import Evaluated


def resolve_mappings(cfg: Config, specs: list[str]) -> list:
    """Each spec (uniform, last, lower, upper, file.json, 2,4,6 or a search run id) as a Mapping."""
    from layersearch.models import load_teacher_config
    from layersearch.resolve import resolve_any_mapping

    n = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
    return [resolve_any_mapping(spec, cfg, n) for spec in specs]


def random_mappings(cfg: Config, count: int, num_teacher_layers: int, seed: int = 0) -> list:
    """Seeded random mappings inside the search space (the GA's repair enforces it)."""
    from layersearch.search.ga import GeneticSearch

    ga = GeneticSearch(cfg.search, cfg.student.num_layers, num_teacher_layers)
    rng = random.Random(seed)
    out: list = []
    for _ in range(count * 20):
        if len(out) == count:
            break
        m = ga.space.mapping(ga.random_genome(rng))
        if m not in out:
            out.append(m)
    return out


def evaluate(cfg: Config, mappings: list[str], use_cache: bool = True, say: Say | None = None) -> Evaluated:
    """Proxy fitness of one or more mappings (names, files, gene lists or search run ids)."""
    return evaluate_all(cfg, resolve_mappings(cfg, mappings), list(mappings), use_cache=use_cache, say=say)


def baselines(cfg: Config, random_count: int = 2, seed: int = 0, use_cache: bool = True,
              say: Say | None = None) -> Evaluated:
    """The named heuristics (uniform, last, lower, upper) and a few seeded random mappings."""
    from layersearch.mapping import HEURISTICS, heuristic
    from layersearch.models import load_teacher_config

    n = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
    labels, mappings = [], []
    for name in HEURISTICS:
        m = heuristic(name, cfg.student.num_layers, n)
        if m not in mappings:
            labels.append(name)
            mappings.append(m)
    for i, m in enumerate(random_mappings(cfg, random_count, n, seed)):
        if m not in mappings:
            labels.append(f"random-{i}")
            mappings.append(m)
    return evaluate_all(cfg, mappings, labels, use_cache=use_cache, say=say)


def evaluate_all(cfg: Config, mappings: list, labels: list[str], use_cache: bool = True,
                 parent_id: str | None = None, tracker=None, say: Say | None = None) -> Evaluated:
    """Evaluate (or read from cache, or extend a cached record with new seeds) each mapping;
    log one MLflow run each (nested under ``parent_id`` if given).

    The gains are empty unless ``tasks.init_baseline``.
    """
    from layersearch.fitness import Evaluator, local_device, spec_key, units_of
    from layersearch.fitness.baseline import attach_gains
    from layersearch.search.cache import EvaluationCache
    from layersearch.tracking import Tracker, log_evaluation

    say = sink(say)
    tracker = tracker or Tracker(cfg.tracking)
    cache = EvaluationCache(cfg.search.cache_dir, spec_key(cfg, local_device(cfg)))
    units = units_of(cfg)
    evaluator = None  # teacher, slice and task data load only if something must run

    def loaded() -> Evaluator:
        nonlocal evaluator
        evaluator = evaluator or Evaluator(cfg)
        return evaluator

    results, run_ids = [], []
    for label, mapping in zip(labels, mappings, strict=True):
        hit, partial = (cache.lookup(mapping, units, cfg.tasks.scored, cfg.tasks.scored_weights) if use_cache
                        else (None, None))
        say(f"[bold]{label}[/] {mapping}: {cache_note(hit, partial)}")
        with tracker.run(f"eval {mapping}", parent_id=parent_id,
                         tags={"layersearch.kind": "evaluation", "layersearch.label": label}) as run_id:
            if hit is None:
                ev = loaded().evaluate(mapping, prior=partial, progress=True)
                cache.put(ev)
            else:
                ev = hit
            log_evaluation(tracker, run_id, ev, cached=hit is not None)
        results.append((label, ev))
        run_ids.append(run_id)
    gains = {}
    if cfg.tasks.init_baseline:
        gains = attach_gains(cfg.tasks, results, run_ids,
                             _proxy_inits(cfg, loaded, tracker, parent_id, use_cache, say), tracker, say=say)
    return Evaluated(results, run_ids, list(cfg.tasks.scored), gains)


def cache_note(hit, partial) -> str:
    if hit is not None:
        return "cached"
    if partial is not None:
        return f"extending the cached record ({len(partial.units)} seed(s) stored) ..."
    return "evaluating ..."


def _proxy_inits(cfg: Config, loaded, tracker, parent_id: str | None, use_cache: bool, say: Say):
    """A function from an evaluation to its untouched proxy init's evaluation: cached under the
    init spec key, evaluated once per init (once in all where ``proxy.init_layers`` is fixed)."""
    from layersearch.fitness import init_spec_key, local_device, units_of
    from layersearch.fitness.baseline import baseline_run
    from layersearch.init import init_identity, proxy_init_config
    from layersearch.search.cache import EvaluationCache

    cache = EvaluationCache(cfg.search.cache_dir, init_spec_key(cfg, local_device(cfg)))
    seen: dict[str, object] = {}

    def init_for(ev):
        ident = init_identity(proxy_init_config(cfg), ev.mapping)
        if ident.key not in seen:
            seen[ident.key] = baseline_run(cache, ident, units_of(cfg), cfg.tasks,
                                           lambda prior: loaded().evaluate_init(ev.mapping, prior, progress=True),
                                           tracker, parent_id, use_cache, say=say)
        return seen[ident.key]

    return init_for
