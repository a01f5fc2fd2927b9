"""How much of a proxy fitness is signal: seed noise, slice noise, spread across mappings, ranking stability.

    .venv/bin/python bench/fidelity.py                       # from the repository root
    .venv/bin/python bench/fidelity.py --seeds 5 --slices 2 --set tasks.finetune.epochs=2
    .venv/bin/python bench/fidelity.py --precision-check --seeds 3 --slices 1   # fp32 vs bf16 ranking
    .venv/bin/python bench/fidelity.py --precision-check --slices 1 --set tasks.readout=probe  # unit by unit

Evaluates at least 8 mappings (uniform, last, lower, upper and seeded random
ones) of the config's search space at a high fidelity (``--seeds`` fine-tune
seeds x ``--slices`` proxy slices, 5 x 2 by default) on the quickstart
teacher and data, then reads every figure off the per-seed units:

- fine-tune seed sd: the spread of one unit's fitness between fine-tune seeds
  on the same slice (pooled within slices, root mean square over mappings);
- slice sd: the spread between proxy slices beyond what their fine-tune
  seeds explain (variance components);
- signal: the spread of the mappings' true fitness, i.e. the sd of their
  high-fidelity means less what those means' own seed noise explains (the
  dev set is the same for every mapping, so its noise is not subtracted);
- signal-to-noise: signal over the noise of one cheap evaluation (one seed,
  one slice), so 1 means a cheap evaluation's noise is as large as the
  differences it is meant to rank;
- Kendall tau between the ranking at the cheap budget (the first slice's
  first seed, which is one of the high-fidelity units) and the ranking at
  the high one, with the measured compute ratio of the two budgets.

Per task it also prints how far above a constant predictor (Matthews 0) the
students get and how much of the spread across mappings that task carries.
Evaluations are cached (``search.cache_dir``): a second run, or a run with
more seeds, reuses every unit it has.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
from scipy.stats import kendalltau

from layersearch.config import load_config
from layersearch.fitness import Evaluator, compare, interval_text, local_device, spec_key, summarize, units_of
from layersearch.fitness.aggregate import task_scores, task_weights, unit_fitness, unit_order
from layersearch.fitness.record import unpack_labels
from layersearch.fitness.stats import fitness_estimate
from layersearch.mapping import HEURISTICS, heuristic
from layersearch.models import load_teacher_config
from layersearch.search.cache import EvaluationCache


def mappings_for(cfg, n: int, count: int) -> list[tuple[str, object]]:
    from layersearch.workflows.evaluate import random_mappings

    out = []
    for name in HEURISTICS:
        m = heuristic(name, cfg.student.num_layers, n)
        if m not in [x for _, x in out]:
            out.append((name, m))
    for i, m in enumerate(random_mappings(cfg, 4 * count, n, seed=0)):
        if len(out) >= count:
            break
        if m not in [x for _, x in out]:
            out.append((f"random-{i}", m))
    return out


def evaluate(cfg, mappings, workers: int) -> list[tuple[str, object]]:
    """Every mapping's high-fidelity evaluation: from the cache, extended, or run.

    With several workers the runs go through the search's own Ray evaluator
    pool, one single-threaded evaluator per core: small fine-tuning batches
    use a core each better than two cores share one batch.
    """
    cache = EvaluationCache(cfg.search.cache_dir, spec_key(cfg, local_device()))
    units = units_of(cfg)
    found, todo, priors = {}, [], {}
    for label, m in mappings:
        hit, partial = cache.lookup(m, units, cfg.tasks.scored, cfg.tasks.scored_weights)
        if hit is not None:
            found[m.key] = hit
            print(f"  {label:10s} {str(m):12s} {interval_text(hit):32s} (cached)", flush=True)
        else:
            todo.append(m)
            if partial is not None:
                priors[m.key] = partial
    labels = {m.key: label for label, m in mappings}
    began = time.perf_counter()

    def done(ev) -> None:
        if not ev.ok:
            raise SystemExit(f"{labels[ev.mapping.key]} {ev.mapping} failed: {ev.status}")
        cache.put(ev)
        found[ev.mapping.key] = summarize(ev, cfg.tasks.scored, cfg.tasks.scored_weights)
        print(f"  {labels[ev.mapping.key]:10s} {str(ev.mapping):12s} {interval_text(ev):32s} "
              f"({time.perf_counter() - began:.0f} s since start)", flush=True)

    if todo and workers > 1:
        from layersearch.search.pool import EvaluatorPool

        pool_cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(
            update={"num_evaluators": workers, "num_cpus": 1, "pack_size": 1, "address": None})})
        pool = EvaluatorPool(pool_cfg, spec=spec_key(cfg, local_device()))
        try:
            pool.run(todo, done, priors=priors)
        finally:
            pool.shutdown()
    elif todo:
        evaluator = Evaluator(cfg)
        for m in todo:
            done(evaluator.evaluate(m, prior=priors.get(m.key)))
    return [(label, found[m.key]) for label, m in mappings]


def components(values: dict[str, float], units: dict) -> tuple[float, float, float]:
    """(within-slice variance, between-slice variance component, fine-tune seeds per slice)."""
    slices: dict[int, list[float]] = {}
    for u, v in values.items():
        slices.setdefault(units[u]["slice_seed"], []).append(v)
    per = statistics.fmean(len(v) for v in slices.values())
    if per < 2:
        raise SystemExit("--seeds must be at least 2 to tell fine-tune seed noise from slice noise")
    within = statistics.fmean(statistics.variance(v) for v in slices.values() if len(v) > 1)
    if len(slices) < 2:
        return within, math.nan, per
    between = statistics.variance([statistics.fmean(v) for v in slices.values()]) - within / per
    return within, between, per  # unclipped: a negative component says "smaller than the seeds explain"


def paired_slice_spread(results: list, names: list[str], weights) -> float:
    """The sd between slices of a mapping's paired difference from uniform (each slice's mean over
    its fine-tune seeds), root mean square over mappings: what a paired comparison cannot cancel,
    the spread between distillation runs (plus what fine-tune noise is left in a slice mean)."""
    ref = next(ev for label, ev in results if label == "uniform")
    base = unit_fitness(ref, names, weights)
    out = []
    for label, ev in results:
        if label == "uniform":
            continue
        values = unit_fitness(ev, names, weights)
        per_slice: dict[int, list[float]] = {}
        for u, v in values.items():
            if u in base:
                per_slice.setdefault(ev.units[u]["slice_seed"], []).append(v - base[u])
        if len(per_slice) >= 2:
            out.append(statistics.variance([statistics.fmean(v) for v in per_slice.values()]))
    return math.sqrt(statistics.fmean(out)) if out else math.nan


def cost(ev, units: list[str]) -> float:
    """Seconds to compute these units from scratch: one distillation per slice, their fine-tunes."""
    slices = {ev.units[u]["slice_seed"]: ev.units[u].get("distill_s", 0.0) for u in units}
    return sum(slices.values()) + sum(t["seconds"] for u in units for t in ev.units[u]["tasks"].values())


def precision_check(args, overrides: list[str]) -> None:
    """The same mappings and units in fp32 and in bf16: does the ranking hold?

    Both the proxy distillation and the fine-tuning change precision. Prints each
    mapping's fitness under both, their paired difference, Kendall tau between the
    two rankings and the compute ratio, which decide whether ``auto`` may use bf16.
    """
    runs = {}
    for value in ("fp32", "bf16"):
        cfg = load_config(args.config, [*overrides, f"proxy.train.precision={value}",
                                        f"tasks.finetune.precision={value}"])
        n = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
        print(f"\n{value}:", flush=True)
        runs[value] = evaluate(cfg, mappings_for(cfg, n, args.mappings), args.workers)
    print(f"\n{'mapping':10s} {'genes':12s} {'fp32':>8s} {'bf16':>8s} {'bf16-fp32':>10s}")
    fp32 = [ev.fitness for _, ev in runs["fp32"]]
    bf16 = [ev.fitness for _, ev in runs["bf16"]]
    for (label, ev), b in zip(runs["fp32"], bf16, strict=True):
        print(f"{label:10s} {str(ev.mapping):12s} {ev.fitness:8.4f} {b:8.4f} {b - ev.fitness:+10.4f}")
    diffs = [b - a for a, b in zip(fp32, bf16, strict=True)]
    seconds = {k: sum(cost(ev, list(ev.units)) for _, ev in v) for k, v in runs.items()}
    print(f"\nbf16 - fp32 over mappings: mean {statistics.fmean(diffs):+.4f}, sd {statistics.stdev(diffs):.4f}; "
          f"spread of fp32 fitness across mappings: sd {statistics.stdev(fp32):.4f}")
    print(f"compute fp32 / bf16: {seconds['fp32'] / seconds['bf16']:.2f}x")
    # What a tau means at this fidelity: rankings by single units, bf16 against fp32 on the
    # same unit, and fp32 against fp32 on another fine-tune seed (the noise ceiling).
    tasks = load_config(args.config, overrides).tasks
    names, weights = tasks.scored, tasks.scored_weights
    per = {k: [unit_fitness(ev, names, weights) for _, ev in v] for k, v in runs.items()}
    deterministic = tasks.readout != "finetune"
    if deterministic:
        # A deterministic readout: the same student in both precisions should read the same, unit by
        # unit; what differs is what bf16 changed in the student itself.
        gaps = [abs(per["bf16"][i][u] - per["fp32"][i][u]) for i, (_, a) in enumerate(runs["fp32"])
                for u in a.units]
        line = (f"unit by unit ({tasks.readout} readout): |bf16 - fp32| per unit mean "
                f"{statistics.fmean(gaps):.6f}, max {max(gaps):.6f}")
        if tasks.readout == "probe":  # class predictions: the share that bf16 left unchanged means something
            agree = [float(np.mean(a.predictions(t, [u])[0] == b.predictions(t, [u])[0]))
                     for (_, a), (_, b) in zip(runs["fp32"], runs["bf16"], strict=True)
                     for u in a.units for t in names]
            line += f"; {100 * statistics.fmean(agree):.1f}% of dev predictions identical"
        print(line)
    units = sorted(per["fp32"][0])
    same = [kendalltau([u[x] for u in per["fp32"]], [u[x] for u in per["bf16"]]).statistic for x in units]
    line = f"kendall tau by single units: bf16 vs fp32 on the same unit {statistics.fmean(same):.2f}"
    other = [kendalltau([u[x] for u in per["fp32"]], [u[y] for u in per["fp32"]]).statistic
             for i, x in enumerate(units) for y in units[i + 1:]
             if not deterministic]  # a deterministic readout has no second seed: no noise ceiling
    if other:
        line += f"; fp32 vs fp32 on another seed {statistics.fmean(other):.2f}"
    elif deterministic:
        line += " (deterministic readout: no seed noise, so no fp32-vs-fp32 ceiling)"
    print(line)
    tau = kendalltau(fp32, bf16).statistic
    print(f"kendall tau fp32 vs bf16: {tau:.2f} over {len(fp32)} mappings (auto may use bf16 at >= 0.9)")
    from layersearch.precision import CPU_AUTO_BF16_READOUTS, cpu_has_native_bf16, resolve_precision

    print(f"this CPU has native bf16: {'yes' if cpu_has_native_bf16() else 'no'}; precision auto for the "
          f"{tasks.readout} readout here: {resolve_precision('auto', 'cpu', tasks.readout)} "
          f"(readouts whose check passed: {sorted(CPU_AUTO_BF16_READOUTS)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--mappings", type=int, default=8, help="mappings to evaluate (at least 8)")
    ap.add_argument("--seeds", type=int, default=5, help="fine-tune seeds at the high fidelity")
    ap.add_argument("--slices", type=int, default=2, help="proxy slices at the high fidelity")
    ap.add_argument("--workers", type=int, default=2, help="evaluators in parallel, one core each")
    ap.add_argument("--set", action="append", default=[], help="dotted override KEY=VALUE")
    ap.add_argument("--precision-check", action="store_true",
                    help="evaluate every mapping in fp32 and in bf16 and compare the rankings")
    args = ap.parse_args()
    # The fine-tune readout unless --set names another (the quickstart ships agreement).
    overrides = ["tasks.readout=finetune", *args.set, f"tasks.finetune.seeds={list(range(args.seeds))}",
                 f"proxy.slice_seeds={list(range(args.slices))}"]
    if args.precision_check:
        precision_check(args, overrides)
        return
    cfg = load_config(args.config, overrides)
    names, weights = cfg.tasks.scored, cfg.tasks.scored_weights
    n = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
    began = time.perf_counter()
    print(f"fidelity of proxy fitness: {args.mappings} mappings x {args.slices} slices x {args.seeds} "
          f"fine-tune seeds; tasks {names}; proxy {cfg.proxy.train.max_steps} steps; fine-tune "
          f"{cfg.tasks.finetune.train_examples} examples x {cfg.tasks.finetune.epochs} epoch(s)", flush=True)
    results = evaluate(cfg, mappings_for(cfg, n, args.mappings), args.workers)
    cheap_unit = f"s{cfg.proxy.slice_seeds[0]}-f{cfg.tasks.finetune.seeds[0]}"

    print(f"\n{'mapping':10s} {'genes':12s} {'high fidelity (95% interval)':34s} {'cheap':>7s} "
          f"{'seed sd':>8s} {'slice sd':>8s}")
    high, cheap, within, between, mean_se2, ratios = [], [], [], [], [], []
    for label, ev in results:
        values = unit_fitness(ev, names, weights)
        w, b, per = components(values, ev.units)
        high.append(ev.fitness)
        cheap.append(values[cheap_unit])
        within.append(w)
        between.append(b)
        est = fitness_estimate({t: ev.predictions(t, unit_order(ev)) for t in names},
                               {t: unpack_labels(ev.dev_labels[t]) for t in names}, task_weights(names, weights),
                               groups=[ev.units[u]["slice_seed"] for u in unit_order(ev)])
        mean_se2.append(est.seed_se ** 2)
        ratios.append(cost(ev, list(ev.units)) / cost(ev, [cheap_unit]))
        print(f"{label:10s} {str(ev.mapping):12s} {interval_text(ev):34s} {values[cheap_unit]:7.4f} "
              f"{math.sqrt(w):8.4f} {math.copysign(math.sqrt(abs(b)), b) if not math.isnan(b) else math.nan:8.4f}")

    print("\nper task: mean Matthews over every unit of every mapping (0 = a constant predictor), "
          "its sd across mappings and the mean seed sd")
    scores = [task_scores(ev, names) for _, ev in results]
    for t in names:
        per_mapping = [s[t] for s in scores]
        means = [statistics.fmean(v) for v in per_mapping]
        seed_sd = math.sqrt(statistics.fmean(statistics.variance(v) for v in per_mapping))
        raw = [ev.metrics[next(k for k in ev.metrics if k.startswith(f"{t}/"))] for _, ev in results]
        print(f"  {t:6s} mean {statistics.fmean(means):.3f}  across mappings sd {statistics.stdev(means):.3f}  "
              f"seed sd {seed_sd:.3f}  raw {statistics.fmean(raw):.3f} vs majority "
              f"{results[0][1].majority[t]:.3f}")

    ref = next(ev for label, ev in results if label == "uniform")
    verdicts = compare(("uniform", ref), [(label, ev) for label, ev in results if label != "uniform"], names,
                       weights, margin=cfg.tasks.delta)
    print("\nagainst uniform, paired, Holm-corrected:")
    for c in verdicts:
        print(f"  {c.text()}")

    ft_sd = math.sqrt(statistics.fmean(within))
    slice_var = statistics.fmean(between) if not any(math.isnan(b) for b in between) else math.nan
    slice_sd = math.sqrt(max(0.0, slice_var)) if not math.isnan(slice_var) else math.nan
    spread_sd = statistics.stdev(high)
    # What the high-fidelity means' own seed noise leaves of their spread: the true signal.
    signal_sd = math.sqrt(max(0.0, spread_sd ** 2 - statistics.fmean(mean_se2)))
    cheap_noise = math.sqrt(ft_sd ** 2 + (0.0 if math.isnan(slice_sd) else slice_sd ** 2))
    tau = kendalltau(cheap, high).statistic
    print(f"\nfine-tune seed sd (one evaluation): {ft_sd:.4f}")
    print(f"proxy slice sd (component): {slice_sd:.4f} (variance component {slice_var:+.6f}, unclipped: below 0 "
          "means the slice means vary less than their fine-tune seeds explain)")
    print(f"paired distillation spread, sd between slices of the difference from uniform: "
          f"{paired_slice_spread(results, names, weights):.4f} (the fine-tune seeds cancel in a pair; this does not)")
    print(f"spread of mean fitness across mappings: sd {spread_sd:.4f}, range {max(high) - min(high):.4f}; "
          f"signal sd after its own noise: {signal_sd:.4f}")
    print(f"verdicts against uniform: {sum(c.verdict in ('better', 'worse') for c in verdicts)} of "
          f"{len(verdicts)} distinguishable")
    print(f"wall time {time.perf_counter() - began:.0f} s")
    print(f"signal-to-noise: {signal_sd / cheap_noise:.2f}")
    print(f"kendall tau cheap vs high fidelity: {tau:.2f} (compute ratio {np.median(ratios):.1f})")


if __name__ == "__main__":
    main()
