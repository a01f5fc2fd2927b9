"""``layersearch evaluate`` and ``layersearch baselines``: proxy fitness of given mappings.

Each evaluation is one MLflow run (genes as params, per-task scores and
fitness as metrics, loss curves). Results are cached by (proxy spec, mapping):
a mapping evaluated before, here or by a search with the same proxy spec, is
read back instead of re-run (``--no-cache`` forces a fresh evaluation).
"""

from __future__ import annotations

import random
from typing import Annotated

import typer
from rich.table import Table

from layersearch.cli.common import ConfigArg, SetOpt, console, load, user_errors
from layersearch.config import Config


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


def evaluate_all(cfg: Config, mappings: list, labels: list[str], use_cache: bool = True,
                 parent_id: str | None = None, tracker=None, show: bool = True) -> tuple[list, dict]:
    """Evaluate (or read from cache, or extend a cached record with new seeds) each mapping;
    log one MLflow run each (nested under ``parent_id`` if given); print a table.

    Returns ((label, evaluation) pairs, {label: distillation gain}); the gains are empty
    unless ``tasks.init_baseline``.
    """
    from layersearch.fitness import Evaluator, local_device, spec_key, units_of
    from layersearch.fitness.baseline import attach_gains
    from layersearch.search.cache import EvaluationCache
    from layersearch.tracking import Tracker, log_evaluation

    tracker = tracker or Tracker(cfg.tracking)
    cache = EvaluationCache(cfg.search.cache_dir, spec_key(cfg, local_device()))
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
        console.print(f"[bold]{label}[/] {mapping}: {cache_note(hit, partial)}", highlight=False)
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
                             _proxy_inits(cfg, loaded, tracker, parent_id, use_cache), tracker, say=say)
    if show:
        print_table(cfg.tasks.scored, results, gains, title="proxy fitness")
    return results, gains


def cache_note(hit, partial) -> str:
    if hit is not None:
        return "cached"
    if partial is not None:
        return f"extending the cached record ({len(partial.units)} seed(s) stored) ..."
    return "evaluating ..."


def say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _proxy_inits(cfg: Config, loaded, tracker, parent_id: str | None, use_cache: bool):
    """A function from an evaluation to its untouched proxy init's evaluation: cached under the
    init spec key, evaluated once per init (once in all where ``proxy.init_layers`` is fixed)."""
    from layersearch.fitness import init_spec_key, local_device, units_of
    from layersearch.fitness.baseline import baseline_run
    from layersearch.init import init_identity, proxy_init_config
    from layersearch.search.cache import EvaluationCache

    cache = EvaluationCache(cfg.search.cache_dir, init_spec_key(cfg, local_device()))
    seen: dict[str, object] = {}

    def init_for(ev):
        ident = init_identity(proxy_init_config(cfg), ev.mapping)
        if ident.key not in seen:
            seen[ident.key] = baseline_run(cache, ident, units_of(cfg), cfg.tasks,
                                           lambda prior: loaded().evaluate_init(ev.mapping, prior, progress=True),
                                           tracker, parent_id, use_cache, say=say)
        return seen[ident.key]

    return init_for


def print_table(names: list[str], results, gains: dict | None = None, title: str = "proxy fitness") -> None:
    from layersearch.fitness import interval_text
    from layersearch.fitness.aggregate import gain_text

    gains = gains or {}
    scale = ("held-out R^2 of a ridge map from the student's last layer to the teacher's" if names == ["agreement"]
             else "Matthews correlation, 0 = a constant predictor")
    table = Table(title=f"{title} ({', '.join(names)}; {scale}; ± = 95% interval)")
    table.add_column("mapping")
    table.add_column("genes")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("fitness", justify="right", style="bold")
    if gains:
        table.add_column("gain over init", justify="right")
    table.add_column("time", justify="right")
    table.add_column("status")
    for label, ev in sorted(results, key=lambda r: -(r[1].fitness if r[1].fitness is not None else -9)):
        scores = [_task_cell(ev, n) for n in names]
        gain = [_gain_cell(gains.get(label))] if gains else []
        table.add_row(label, str(ev.mapping), *scores, interval_text(ev), *gain,
                      f"{ev.timings.get('total_s', 0):.0f}s",
                      ev.status if len(ev.status) < 60 else ev.status[:57] + "...")
    console.print(table)
    for label, g in gains.items():
        console.print(f"{label}: {gain_text(g)}", highlight=False, soft_wrap=True)


def _gain_cell(g) -> str:
    if g is None:
        return "-"
    return f"{g.mean:+.4f} [{g.low:+.4f}, {g.high:+.4f}]"


def _task_cell(ev, task: str) -> str:
    """Chance-corrected score, then the raw headline metric against what the majority class gets."""
    if task not in ev.scores:
        return "-"
    raw = next((v for k, v in ev.metrics.items() if k.startswith(f"{task}/")), None)
    cell = f"{ev.scores[task]:.3f}"
    if raw is not None and task in ev.majority:
        cell += f" ({raw:.3f} vs {ev.majority[task]:.3f})"
    return cell


MappingsOpt = Annotated[list[str], typer.Option(
    "--mapping", "-m", help="uniform | last | lower | upper | file.json | 2,4,6 | search run id (repeatable)")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Re-run cached evaluations")]


@user_errors
def evaluate(config: ConfigArg, mapping: MappingsOpt,
             no_cache: NoCacheOpt = False,
             set_: SetOpt = None) -> None:
    """Proxy fitness of one or more mappings: distil, fine-tune on the proxy tasks, score."""
    from layersearch.models import load_teacher_config
    from layersearch.resolve import resolve_any_mapping

    cfg = load(config, set_)
    n = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
    mappings = [resolve_any_mapping(spec, cfg, n) for spec in mapping]
    evaluate_all(cfg, mappings, list(mapping), use_cache=not no_cache)


@user_errors
def baselines(config: ConfigArg,
              random_count: Annotated[int, typer.Option("--random", help="Seeded random mappings to add")] = 2,
              seed: Annotated[int, typer.Option(help="Seed of the random mappings")] = 0,
              no_cache: NoCacheOpt = False,
              set_: SetOpt = None) -> None:
    """The named heuristics (uniform, last, lower, upper) and a few random mappings, side by side."""
    from layersearch.mapping import HEURISTICS, heuristic
    from layersearch.models import load_teacher_config

    cfg = load(config, set_)
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
    evaluate_all(cfg, mappings, labels, use_cache=not no_cache)
