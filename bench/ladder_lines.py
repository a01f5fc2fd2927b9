"""The fidelity ladder's lines (bench/ladder.py --report): read from the cache only, never computed.

The statistics are ``layersearch.fitness.ladder_stats``'s and ``compare``'s; this file finds the
cached records, turns them into [B+1, mappings] fitness draws (row 0 as measured, rows 1.. on
resamples of distillation runs, the units inside them and the dev examples, one resample per
row shared by every mapping, as the pairing is) and prints.
"""

from __future__ import annotations

import statistics

import numpy as np

from layersearch.fitness import ladder_stats as ls
from layersearch.fitness.record import Evaluation, unit_key, unpack_labels
from layersearch.fitness.stats import fitness_estimate, task_score

BOOTSTRAP = 1000


# --- records ------------------------------------------------------------------------------------

def runs_each(n: int) -> str:
    return f"{n} distillation run each" if n == 1 else f"{n} distillation runs each"


def teacher_signal(ladder: dict, truth_cfg) -> dict | None:
    """Each ground-truth task's teacher score (mean, low, high), or None if not cached yet."""
    from ladder import teacher_cache, teacher_seeds

    from layersearch.fitness.aggregate import unit_order
    from layersearch.fitness.spec import confirm_tasks

    cache, ident = teacher_cache(ladder, truth_cfg)
    ev = cache.get(ident)
    tasks = confirm_tasks(truth_cfg)
    if ev is None or any(unit_key(0, f) not in ev.units for f in teacher_seeds(ladder, tasks)):
        return None
    units = unit_order(ev)
    out = {}
    for t in tasks.names:
        e = fitness_estimate({t: ev.predictions(t, units)}, {t: unpack_labels(ev.dev_labels[t])})
        out[t] = (e.mean, e.low, e.high)
    return out


def truth_records(ladder: dict, cfg, kind: str, specs, n: int) -> tuple[dict, list[int]]:
    """{label: record} of a ground truth, and the distillation seeds every record holds in full."""
    from ladder import stage_keys

    from layersearch.confirm import distill_seeds, keys
    from layersearch.fitness import local_device
    from layersearch.resolve import resolve_any_mapping
    from layersearch.search.cache import EvaluationCache

    key = stage_keys(ladder).get(f"truth:{kind}", {}).get("key") or keys(cfg, local_device(cfg))[0]
    cache = EvaluationCache(cfg.confirm.cache_dir or cfg.search.cache_dir, key)
    seeds = distill_seeds(cfg) if not ladder.get("spread") else [cfg.distill.train.seed, cfg.distill.train.seed + 1]
    ft = cfg.confirm.tasks.finetune.seeds
    recs = {}
    for label, spec in specs:
        ev = cache.get(resolve_any_mapping(spec, cfg, n))
        if ev is not None and ev.ok and not ev.missing([unit_key(seeds[0], f) for f in ft]):
            recs[label] = ev
    full = [s for s in seeds if recs and all(not ev.missing([unit_key(s, f) for f in ft]) for ev in recs.values())]
    return recs, full


def unit_matrix(ev: Evaluation, units: list[str], tasks: list[str], counts: dict) -> np.ndarray:
    """[B+1, U] unit fitness (mean over tasks): row 0 on the dev set as it is, rows 1.. on each
    dev-example resample."""
    total = None
    for t in tasks:
        y = unpack_labels(ev.dev_labels[t])
        k = int(max(y.max(), max(ev.predictions(t, units).max(), 0))) + 1  # unused for real values
        rows = [np.concatenate([[task_score(row, y, k)], task_score(row, y, k, counts[t])])
                for row in ev.predictions(t, units)]
        m = np.stack(rows, axis=1) / len(tasks)
        total = m if total is None else total + m
    return total


def dev_counts(evs: list[Evaluation], tasks: list[str], rng, shared: dict | None = None) -> dict:
    """Each task's dev-example resamples; a task already in ``shared`` with the same dev set keeps
    its draw there, so the ground truth and a fidelity see the same resample of examples."""
    out = {}
    for t in tasks:
        n = len(evs[0].dev_labels[t])
        if shared is not None and t in shared and shared[t].shape[1] == n:
            out[t] = shared[t]
        else:
            out[t] = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP).astype(np.float32)
    return out


def draws_of(evs: list[Evaluation], units: list[str], tasks: list[str], counts: dict,
             idx: np.ndarray) -> np.ndarray:
    """[B+1, mappings] fitness: row 0 every unit as measured; row b the units ``idx[b - 1]`` drew
    (``ladder_stats.run_unit_draws``: runs, then units inside them; the same draw for every
    mapping, as the pairing is) on that row's dev-example resample."""
    out = []
    for ev in evs:
        mat = unit_matrix(ev, units, tasks, counts)
        out.append(np.concatenate([[mat[0].mean()], np.take_along_axis(mat[1:], idx, axis=1).mean(axis=1)]))
    return np.stack(out, axis=1)


def seconds(evs: list[Evaluation], units: list[str], tasks: list[str]) -> tuple[float, dict[str, float]]:
    """(distillation seconds, {task: fine-tune seconds}) of one evaluation at these units.

    Each stage is priced at its median recorded time over the mappings, not their sum: on a shared
    2-core machine one run that waited behind another records many times its own cost. The units
    record wall seconds (no CPU seconds yet), so the ratio is of medians of wall seconds.
    """
    runs = {ev.units[u]["slice_seed"] for u in units for ev in evs[:1]}
    distill = statistics.median(ev.units[u].get("distill_s", 0.0) for ev in evs for u in units)
    tasks_s = {}
    for t in tasks:
        got = [ev.units[u]["tasks"][t]["seconds"] for ev in evs for u in units if t in ev.units[u]["tasks"]]
        if got:
            tasks_s[t] = statistics.median(got) * len(units)
    return distill * len(runs), tasks_s


def truth_cpu_seconds(ev: Evaluation, units: list[str]) -> float | None:
    """CPU seconds of one ground-truth evaluation at these units (its distillation runs and its
    fine-tunes on the kept tasks), or None where its units predate CPU accounting."""
    runs, finetune = {}, 0.0
    for u in units:
        unit = ev.units[u]
        if "distill_cpu_s" not in unit or "finetune_cpu_s" not in unit:
            return None
        runs[unit["slice_seed"]] = unit["distill_cpu_s"]
        finetune += unit["finetune_cpu_s"]
    return sum(runs.values()) + finetune


def cpu_ratio(truth: list[Evaluation], gt_units: list[str], fidelity: list[Evaluation]) -> float | None:
    """Median CPU seconds of a ground-truth evaluation over a fidelity's (every slice), over the
    records that hold CPU seconds; None where none does or a ground-truth unit lacks them."""
    t = [truth_cpu_seconds(ev, gt_units) for ev in truth]
    slices = len({u["slice_seed"] for u in fidelity[0].units.values()}) if fidelity else 0
    # Per slice distilled in the call that recorded them (records completed from a search's cache
    # hold CPU seconds for their new slices only), then times the fidelity's slices.
    f = [ev.timings["cpu_s"] / ev.timings["cpu_slices"] * slices for ev in fidelity
         if ev.timings.get("cpu_slices") and "cpu_s" in ev.timings]
    if any(x is None for x in t) or not f:
        return None
    return ls.compute_ratio(statistics.median(t), statistics.median(f))


def cpu_spent(truth: list[Evaluation], half: list[Evaluation], fidelities: list[Evaluation]) -> dict | None:
    """CPU hours the records hold: each distillation run once (a half-budget student is the same
    run's), every fine-tune, each fidelity record's own work. None where no unit holds CPU seconds."""
    def finetunes(evs):
        return sum(u.get("finetune_cpu_s", 0.0) for ev in evs for u in ev.units.values())

    runs = sum(sum({u["slice_seed"]: u.get("distill_cpu_s", 0.0) for u in ev.units.values()}.values())
               for ev in truth)
    out = {"truth": (runs + finetunes(truth)) / 3600, "half": finetunes(half) / 3600,
           "fidelities": sum(ev.timings.get("cpu_s", 0.0) for ev in fidelities) / 3600}
    if not any(out.values()):
        return None
    # runs resumed after a kill that kept no clock: their first steps are priced, not measured
    out["priced_runs"] = sum(len({u["slice_seed"] for u in ev.units.values() if u.get("distill_cpu_priced_steps")})
                             for ev in truth)
    return out


def tie_note(scores, undefined: int, resamples: int) -> str:
    """What a fidelity's tau rests on where most mappings score the same (a readout that leaves
    students at the constant predictor): the interval then keeps only the resamples that drew a
    ranking at all, so it is conditional on those, and can even miss its own point."""
    scores = np.asarray(scores, dtype=float)
    if np.ptp(scores) == 0:
        return " (every mapping scores the same: no ranking)"
    values, counts = np.unique(scores, return_counts=True)
    k = int(counts.max())
    if k < 2 or 2 * k < len(scores):
        return ""
    return (f" ({k} of {len(scores)} mappings score the same, {values[counts.argmax()]:.4f}: its tau rests on the "
            f"other {len(scores) - k}; {undefined} of {resamples} resamples drew no ranking, and the interval "
            "is over the rest only)")


def pfmt(p: float) -> str:
    """A permutation p: Monte Carlo ones are never 0, so a small one is a bound, not 0.000."""
    return "n/a" if not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt(x: float, sign: bool = True) -> str:
    return "n/a" if not np.isfinite(x) else (f"{x:+.2f}" if sign else f"{x:.2f}")


def ci(pair) -> str:
    return f"[{fmt(pair[0])}, {fmt(pair[1])}]"


# --- the report ---------------------------------------------------------------------------------

def report(ladder: dict, reg: dict, extra: list[str]) -> dict:
    from ladder import configs, stage_keys, teacher_layers, truth_specs

    from layersearch.fitness import compare, init_spec_key, local_device, spec_key, summarize, units_of
    from layersearch.fitness.spec import confirm_tasks
    from layersearch.init import init_identity, proxy_init_config
    from layersearch.mapping import heuristic
    from layersearch.search.cache import EvaluationCache

    rng = np.random.default_rng(0)
    out: dict = {"registered": reg}
    proxy, truth = configs(ladder, extra)
    n = teacher_layers(truth())
    if ladder.get("traded"):
        print("traded for a CPU (bench/ladder.py CPU_TRADE; never the mappings or the 2 runs each): "
              + "; ".join(ladder["traded"]))
    signal = teacher_signal(ladder, truth("teacher"))
    names = list(confirm_tasks(truth()).names)
    if signal is None:
        print("task signal: the teacher's scores are not cached yet (the ladder's first stage); every "
              "ground-truth task is used")
        tasks = names
    else:
        tasks = [t for t in names if signal[t][1] > 0]
        for t, (mean, lo, hi) in signal.items():
            why = "signal" if lo > 0 else "no signal (left out of the ground truth)"
            print(f"task {t}: teacher {mean:.3f} [{lo:.3f}, {hi:.3f}] -> {why}")
        if not tasks:
            print("no task carries signal at this budget, even for the teacher: the ground truth cannot rank")
            return out
        out["teacher"] = signal
        if ladder["kept_only"]:
            proxy, truth = configs(ladder, extra, tasks)
    out["truth_tasks"] = tasks
    specs = truth_specs(reg)
    truth_cfg = truth()
    delta = truth_cfg.confirm.tasks.delta
    # Which init the final students start from names the ground truth.
    name = "own-genes init" if ladder["own_genes"] else f"like-for-like init: {ladder.get('init_layers')}"
    if ladder["own_genes"]:
        print("like-for-like ground truth (students starting from proxy.init_layers, as the proxy's): not "
              "computed for this ladder; every line below is about its own-genes ground truth, which "
              "measures mapping and init together while the proxy measures the mapping alone")
    recs, runs = truth_records(ladder, truth_cfg, "truth", specs, n)
    labels = [lbl for lbl, _ in specs if lbl in recs]
    if len(labels) < 3 or not runs:
        print(f"ground truth ({name}): {len(labels)} of {len(specs)} mappings distilled so far; too few to rank")
        return out
    ft = truth_cfg.confirm.tasks.finetune.seeds
    gt_units = [unit_key(s, f) for s in runs for f in ft]
    extra_runs = {lbl: sorted({u["slice_seed"] for u in recs[lbl].units.values()}) for lbl in labels}
    more = [lbl for lbl in labels if len(extra_runs[lbl]) > len(runs)]
    runs_note = runs_each(len(runs))
    if len(runs) == 1:
        runs_note += (" (a second only for " + ", ".join(more) + ")" if more else "") + \
            ": the cache lacks a second run per mapping, so runs are not resampled and no verdict is about a mapping"
    print(f"ground truth ({name}): {len(labels)} mappings x {runs_note}; "
          f"{truth_cfg.distill.train.max_steps} steps; tasks {', '.join(tasks)}; δ {delta}")
    for lbl in more:
        by_run = {s: summarize(recs[lbl].restricted([unit_key(s, f) for f in ft]), tasks).fitness
                  for s in extra_runs[lbl]}
        print(f"  distillation runs, {lbl}: " + ", ".join(f"seed {s} {v:.4f}" for s, v in by_run.items()))
    evs = [recs[lbl] for lbl in labels]
    gt_counts = dev_counts(evs, tasks, rng)
    gt_idx = ls.run_unit_draws([s for s in runs for _ in ft], BOOTSTRAP, rng)
    gt = draws_of(evs, gt_units, tasks, gt_counts, gt_idx)
    out["ground_truth"] = {lbl: float(v) for lbl, v in zip(labels, gt[0], strict=True)}
    # Each task's figures.
    for t in tasks:
        per = [unit_matrix(ev, gt_units, [t], gt_counts)[0].mean() for ev in evs]
        print(f"  task {t}: " + ", ".join(f"{lbl} {v:.4f}" for lbl, v in
                                          sorted(zip(labels, per, strict=True), key=lambda x: -x[1])))
        out.setdefault("per_task", {})[t] = {lbl: float(v) for lbl, v in zip(labels, per, strict=True)}
    restricted = {lbl: summarize(recs[lbl].restricted(gt_units), tasks) for lbl in labels}
    uniform = "uniform"
    # searched vs uniform
    searched = {m["label"]: m for m in reg["mappings"] if m["kind"] == "searched"}
    winner = searched.get("search-winner")
    if winner is None or winner["genes"] is None:
        line = ("searched vs uniform on final students: pending (no search run registered: "
                "bench/ladder.py --register --search-run RUN_ID)")
    else:
        lbl = winner.get("same_as", "search-winner")
        if lbl == uniform:
            line = (f"searched vs uniform on final students: the search's winner {winner['genes']} is uniform "
                    "itself: +0 by definition (the runner-up's line is below)")
        elif lbl not in restricted:
            line = f"searched vs uniform on final students: {winner['genes']} not distilled yet"
        else:
            c = compare((uniform, restricted[uniform]), [(lbl, restricted[lbl])], tasks, margin=delta)[0]
            e = c.estimate
            line = (f"searched vs uniform on final students: {winner['genes']} {e.mean:+.4f} [{e.low:+.4f}, "
                    f"{e.high:+.4f}] ({runs_each(e.distillation_runs)}), δ {delta} -> {c.verdict}")
            out["searched_vs_uniform"] = c.to_dict()
    print(line)
    # the best of the registered list vs uniform, Holm over all of them
    others = [(lbl, restricted[lbl]) for lbl in labels if lbl != uniform]
    comps = compare((uniform, restricted[uniform]), others, tasks, margin=delta)
    best = max(comps, key=lambda c: c.estimate.mean)
    e = best.estimate
    genes = next(m["genes"] for m in reg["mappings"] if m["label"] == best.label)
    print(f"best pre-registered mapping vs uniform: {best.label} {genes} {e.mean:+.4f} [{e.low:+.4f}, {e.high:+.4f}] "
          f"({runs_each(e.distillation_runs)}; the best of {len(comps)} after the fact, Holm over "
          f"the {len(comps)}), δ {delta} -> {best.verdict}")
    out["comparisons"] = [c.to_dict() for c in comps]
    print("  verdicts against uniform: " + ", ".join(f"{c.label} {c.estimate.mean:+.4f} {c.verdict}" for c in comps))
    sp = ls.spread(gt)
    print(f"spread any mapping can buy here: sd {sp['sd']:.4f}, max-min {sp['range']:.4f} "
          f"[{sp['range_ci'][0]:.4f}, {sp['range_ci'][1]:.4f}] ({len(labels)} mappings; noise widens a range)")
    out["spread"] = sp
    mappings = ls.mapping_draws(len(labels), BOOTSTRAP, rng)
    # stability: the same mappings at half the steps
    if ladder.get("half"):
        hrecs, hruns = truth_records(ladder, truth("half"), "half", specs, n)
        if all(lbl in hrecs for lbl in labels) and hruns[:len(runs)] == runs:
            # the same units and dev examples drawn as the full budget's: runs of one seed pair up
            half = draws_of([hrecs[lbl] for lbl in labels], gt_units, tasks, gt_counts, gt_idx)
            st = ls.tau_interval(half, gt, mappings)
            print(f"ground truth stability: tau {fmt(st['tau'])} {ci(st['tau_ci'])} between half and full budget "
                  f"(permutation p {pfmt(st['p'])}; mappings, runs, units, dev examples resampled)")
            out["stability"] = st
        else:
            print(f"ground truth stability: not yet ({sum(lbl in hrecs for lbl in labels)} of {len(labels)} "
                  "mappings distilled at half the budget)")
    else:
        print("ground truth stability: not measured (this ladder has no half-budget students)")
    if ladder.get("own"):
        own_lines(ladder, truth("own"), specs, n, labels, gt, gt_units, gt_counts, gt_idx, mappings, tasks, out)
    # fidelities
    truth_s = statistics.median(
        ls.truth_seconds(*seconds([ev], gt_units, tasks), tasks) for ev in evs)
    keys = stage_keys(ladder)
    lines, table = [], {}
    fidelity_recs: list[Evaluation] = []
    uniform_mapping = heuristic("uniform", truth_cfg.student.num_layers, n)
    for fname, (_, _, nseeds) in ladder["fidelities"].items():
        role = "primary" if fname == reg["primary_fidelity"] else "exploratory"
        cfg = proxy(fname)
        dev = local_device(cfg)
        key = keys.get(f"fidelity:{fname}", {})
        cache = EvaluationCache(cfg.search.cache_dir, key.get("key") or spec_key(cfg, dev))
        from layersearch.resolve import resolve_any_mapping

        units_all = units_of(cfg)
        chosen = units_all if nseeds is None else [u for u in units_all if u[1] in cfg.tasks.unit_seeds[:nseeds]]
        units = [unit_key(s, f) for s, f in chosen]
        frecs = [cache.get(resolve_any_mapping(dict(specs)[lbl], cfg, n)) for lbl in labels]
        fidelity_recs += [ev for ev in frecs if ev is not None]
        if any(ev is None or not ev.ok or ev.missing(units) for ev in frecs):
            lines.append(f"fidelity {fname} ({role}): not every mapping is evaluated yet")
            continue
        ptasks = cfg.tasks.scored
        counts = dev_counts(frecs, ptasks, rng, shared=gt_counts)
        idx = ls.run_unit_draws([s for s, _ in chosen], BOOTSTRAP, rng)
        fid = draws_of(frecs, units, ptasks, counts, idx)
        t = ls.tau_interval(fid, gt, mappings)
        ratio = ls.compute_ratio(truth_s, ls.truth_seconds(*seconds(frecs, units, ptasks), ptasks))
        cpu = cpu_ratio(evs, gt_units, frecs)
        ratio_text = (f"compute ratio {cpu:.1f} (CPU seconds)" if cpu is not None
                      else f"compute ratio {ratio:.1f} (median wall seconds: no CPU seconds recorded)")
        entry = {"role": role, "tau": t["tau"], "tau_ci": list(t["tau_ci"]), "p": t["p"], "undefined": t["undefined"],
                 "compute_ratio": ratio, "compute_ratio_cpu": cpu,
                 "fitness": {lbl: float(v) for lbl, v in zip(labels, fid[0], strict=True)}}
        init_cache = EvaluationCache(cfg.search.cache_dir, key.get("init_key") or init_spec_key(cfg, dev))
        init = init_cache.get(init_identity(proxy_init_config(cfg), uniform_mapping))
        gain_text = "gain not measured (no init baseline cached)"
        if init is not None and not init.missing(units):
            base = draws_of([init], units, ptasks, counts, idx)[:, 0]  # paired: the same units and examples
            g = ls.gain(fid, base, mappings)
            lo, hi = g["gain_ci"]
            gain_text = f"gain over the untouched init {g['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            entry.update(gain=g["gain"], gain_ci=list(g["gain_ci"]), init_fitness=float(base[0]))
        ties = tie_note(fid[0], t["undefined"], BOOTSTRAP)
        lines.append(f"fidelity {fname} ({role}): tau {fmt(t['tau'])} {ci(t['tau_ci'])}{ties}, permutation p "
                     f"{pfmt(t['p'])}, {ratio_text}, {gain_text}")
        table[fname] = entry
    out["fidelities"] = table
    spent = cpu_spent(list(recs.values()), list(hrecs.values()) if ladder.get("half") else [], fidelity_recs)
    if spent is not None:
        out["cpu_hours"] = spent
        print(f"CPU spent, as recorded: ground truth {spent['truth']:.2f} h (distillation and fine-tunes of the "
              f"full-budget students), half-budget fine-tunes {spent['half']:.2f} h, fidelities "
              f"{spent['fidelities']:.2f} h (the records that hold CPU seconds; the teacher's fine-tunes record "
              "wall seconds only" + (f"; {spent['priced_runs']} distillation runs resumed after a kill whose first "
                                     "steps kept no clock, priced at the rate of their measured steps"
                                     if spent["priced_runs"] else "") + ")")
    width = max(12, *(len(lbl) + 2 for lbl in labels))  # "search-runner-up" is 16
    print("\n" + "mapping".ljust(width) + "truth".rjust(8) + "".join(f"{i + 1:>8}" for i in range(len(table))))
    for lbl in sorted(labels, key=lambda x: -out["ground_truth"][x]):
        print(lbl.ljust(width) + f"{out['ground_truth'][lbl]:8.4f}" + "".join(
            f"{f['fitness'][lbl]:8.4f}" for f in table.values()))
    print("columns: " + ", ".join(f"{i + 1} {f}" for i, f in enumerate(table)) + "\n")
    orders = "exact" if len(labels) <= ls.EXACT_UP_TO else f"{ls.PERMUTATIONS:,} random orders"
    print(f"fidelities against the ground truth ({name}); tau intervals resample the mappings, the distillation "
          f"runs (slices), the units inside them and the dev examples; p: permutation p of tau over the "
          f"{len(labels)} mappings (two-sided, {orders}); compute ratio: seconds of one ground-truth evaluation "
          f"on {', '.join(tasks)} over one of the fidelity's, in CPU seconds where both recorded them")
    for line in lines:
        print(line)
    return out


def own_lines(ladder, cfg, specs, n, labels, gt, gt_units, gt_counts, gt_idx, mappings, tasks, out) -> None:
    """The second, named ground truth (``--stages own``): each student initialised from its own
    genes' layers, as ``distill --mapping`` does; how far it ranks like the like-for-like one."""
    from layersearch.fitness import compare, summarize

    recs, runs = truth_records(ladder, cfg, "own", specs, n)
    if not all(lbl in recs for lbl in labels) or not runs:
        print(f"second ground truth (own-genes init): {sum(lbl in recs for lbl in labels)} of {len(labels)} "
              "mappings distilled (bench/ladder.py --stages own)")
        return
    delta = cfg.confirm.tasks.delta
    evs = [recs[lbl] for lbl in labels]
    own = draws_of(evs, gt_units, tasks, gt_counts, gt_idx)
    st = ls.tau_interval(own, gt, mappings)
    restricted = {lbl: summarize(recs[lbl].restricted(gt_units), tasks) for lbl in labels}
    comps = compare(("uniform", restricted["uniform"]), [(lbl, restricted[lbl]) for lbl in labels if lbl != "uniform"],
                    tasks, margin=delta)
    best = max(comps, key=lambda c: c.estimate.mean)
    e = best.estimate
    sp = ls.spread(own)
    print(f"second ground truth (own-genes init): tau {fmt(st['tau'])} {ci(st['tau_ci'])} against the like-for-like "
          f"one (permutation p {pfmt(st['p'])}); best vs uniform {best.label} {e.mean:+.4f} [{e.low:+.4f}, "
          f"{e.high:+.4f}], δ {delta} -> {best.verdict}; spread sd {sp['sd']:.4f}, max-min {sp['range']:.4f} "
          f"[{sp['range_ci'][0]:.4f}, {sp['range_ci'][1]:.4f}]")
    out["own_genes"] = {"tau_vs_like_for_like": st, "comparisons": [c.to_dict() for c in comps], "spread": sp,
                        "ground_truth": {lbl: float(v) for lbl, v in zip(labels, own[0], strict=True)}}
