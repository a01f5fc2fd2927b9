"""Ground truth for a few mappings: ``confirm`` distils each fully and scores the final students.

The check a user runs after a search: each mapping gets the full distillation
(the ``distill`` section, ``confirm.distill_seeds`` runs each), each final
student is fine-tuned and scored on ``confirm.tasks``, and every mapping is
compared with the first, paired by distillation seed, fine-tune seed and dev
example, with ``compare``'s intervals, Holm correction and verdicts. Each
final student's model card gets its downstream scores.

MLflow: one ``confirm`` run; nested under it each distill run (with its
lineage tags) and each final student's evaluation; the verdicts as tags
``verdict/<genes>`` and metrics ``diff/...``. See ``layersearch.confirm`` for
what is cached and how ``resume`` continues a killed run.
"""

from __future__ import annotations

from layersearch.config import Config
from layersearch.fitness.baseline import attach_gains, baseline_run
from layersearch.workflows.progress import Say, sink
from layersearch.workflows.results import Confirmed, Evaluated


def confirm(cfg: Config, mappings: list[str], resume: bool = False, use_cache: bool = True,
            progress: bool = True, say: Say | None = None) -> Confirmed:
    """Full distillations of the mappings (names, files, gene lists or search run ids), their final
    students scored downstream, each mapping paired against the first: difference, interval, verdict."""
    from layersearch.confirm import (
        FinalReadout,
        FinalStudents,
        distill_seeds,
        final_units,
        keys,
        new_record,
        seed_config,
    )
    from layersearch.fitness import compare, local_device
    from layersearch.fitness.record import unit_key
    from layersearch.fitness.spec import confirm_tasks
    from layersearch.init import init_identity
    from layersearch.model_card import add_scores
    from layersearch.models import load_teacher_config
    from layersearch.resolve import resolve_any_mapping
    from layersearch.search.cache import EvaluationCache
    from layersearch.tracking import Tracker, log_evaluation
    from layersearch.workflows import distill as distilling
    from layersearch.workflows.compare import distinct, record_verdicts
    from layersearch.workflows.evaluate import cache_note

    say = sink(say)
    specs = list(mappings)
    n = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
    mappings = [resolve_any_mapping(spec, cfg, n) for spec in specs]
    distinct(specs, mappings)
    device = local_device(cfg)
    final_key, init_key = keys(cfg, device)
    root = cfg.confirm.cache_dir or cfg.search.cache_dir
    cache, init_cache = EvaluationCache(root, final_key), EvaluationCache(root, init_key)
    students = FinalStudents.of(cfg, device)
    tasks = confirm_tasks(cfg)
    units, seeds = final_units(cfg), distill_seeds(cfg)
    readout = None

    def loaded() -> FinalReadout:
        nonlocal readout
        readout = readout or FinalReadout(cfg)
        return readout

    tracker = Tracker(cfg.tracking)
    with tracker.run(f"confirm {' '.join(specs)}", tags={"layersearch.kind": "confirm"}) as run_id:
        tracker.log_params(run_id, {"reference": str(mappings[0]), "mappings": [str(m) for m in mappings],
                                    "confirm.distill_seeds": seeds, "final_spec_key": final_key,
                                    "confirm.tasks.names": tasks.names,
                                    "confirm.tasks.finetune.seeds": tasks.finetune.seeds,
                                    "confirm.tasks.finetune.train_examples": tasks.finetune.train_examples,
                                    "distill.train.max_steps": cfg.distill.train.max_steps,
                                    "distill.train.max_tokens": cfg.distill.train.max_tokens})
        say(f"confirm run [bold]{run_id}[/]: {len(mappings)} mapping(s) x {len(seeds)} distillation "
            f"seed(s) {seeds}; final students in {students.root}")
        results, run_ids, made, paths = [], [], [], {}
        for spec, mapping in zip(specs, mappings, strict=True):
            hit, partial = cache.lookup(mapping, units, tasks.names, tasks.weights) if use_cache else (None, None)
            say(f"[bold]{spec}[/] {mapping}: {cache_note(hit, partial)}")
            paths[spec] = [students.path(mapping, seed) for seed in seeds]
            ev, distill_runs = hit, []
            if ev is None:
                ev = new_record(mapping, partial, final_key)
                for seed in seeds:
                    todo = [f for f in tasks.finetune.seeds if unit_key(seed, f) not in ev.units]
                    if not todo:
                        continue
                    out = students.path(mapping, seed)
                    if not students.done(mapping, seed):
                        checkpoints = out.with_name(out.name + ".checkpoints")
                        distill_id = distilling.distill(
                            seed_config(cfg, seed), spec, out, resume=resume and (checkpoints / "run.json").is_file(),
                            progress=progress, parent_id=run_id, say=say,
                            tags={"layersearch.confirm_run": run_id, "layersearch.distill_seed": seed}).run_id
                        distill_runs.append(distill_id)
                        students.note(mapping, seed, distill_id,
                                      tracker.client.get_run(distill_id).data.metrics.get("train_seconds", 0.0))
                    distill_s = students.seconds(mapping, seed)
                    from transformers import AutoModel

                    loaded().score(ev, AutoModel.from_pretrained(out), seed, todo, progress, distill_s)
                    cache.put(ev)  # per distillation seed: a kill loses at most the one in progress
                    add_scores(out, seed_scores(ev, seed), f"`layersearch confirm` (run `{run_id}`), mean over "
                               f"fine-tune seeds {tasks.finetune.seeds}, dev split")
                from layersearch.fitness import summarize

                summarize(ev, tasks.names, tasks.weights)
                # One distillation per seed, then its fine-tunes.
                ev.timings["total_s"] = ev.timings.get("finetune_s", 0.0) + sum(
                    {u["slice_seed"]: u["distill_s"] for u in ev.units.values()}.values())
            with tracker.run(f"final {mapping}", parent_id=run_id,
                             tags={"layersearch.kind": "final-evaluation", "layersearch.label": spec,
                                   "layersearch.distill_runs": ",".join(distill_runs)}) as eval_id:
                log_evaluation(tracker, eval_id, ev, cached=hit is not None)
            results.append((spec, ev))
            run_ids.append(eval_id)
            made += distill_runs

        gains = {}
        if tasks.init_baseline:
            seen: dict[str, object] = {}

            def init_for(ev):
                ident = init_identity(cfg.student.init, ev.mapping)
                if ident.key not in seen:
                    seen[ident.key] = baseline_run(
                        init_cache, ident, units, tasks,
                        lambda prior: loaded().evaluate_init(ev.mapping, ident, prior, init_key, progress),
                        tracker, run_id, use_cache, say=say)
                return seen[ident.key]

            gains = attach_gains(tasks, results, run_ids, init_for, tracker, say=say)
        comparisons, notes = [], []
        if len(results) > 1:
            comparisons = compare(results[0], results[1:], tasks.names, tasks.weights,
                                  margin=cfg.confirm.tasks.delta)
            notes = record_verdicts(tracker, run_id, comparisons, results[0][1], results[1:], gains)
            if len(seeds) < 2:
                notes.append("one distillation run per mapping: these intervals hold the fine-tune "
                             "and dev-set noise of these students, not the spread between distillation "
                             "runs; add runs with --set confirm.distill_seeds=3")
    return Confirmed(run_id, Evaluated(results, run_ids, list(tasks.names), gains), comparisons, notes,
                     students=paths, distill_run_ids=made)



def seed_scores(ev, seed: int) -> dict[str, float]:
    """One final student's downstream metrics (distillation ``seed``), each the mean over its fine-tune seeds."""
    sums: dict[str, list[float]] = {}
    for unit in ev.units.values():
        if unit.get("slice_seed") != seed:
            continue
        for task in unit.get("tasks", {}).values():
            for name, value in task.get("metrics", {}).items():
                sums.setdefault(name, []).append(float(value))
    return {name: sum(v) / len(v) for name, v in sorted(sums.items())}
