"""The fidelity ladder: does a cheap fidelity rank mappings the way their final students rank?

    .venv/bin/python bench/ladder.py            # the full ladder; resumes from its cache
    .venv/bin/python bench/ladder.py --quick    # the same code at toy budgets, minutes
    .venv/bin/python bench/ladder.py --report   # no new work: the lines from what is cached

Mappings: the four heuristics and two seeded random ones from the
quickstart's search space (the heuristics alone with ``--quick``).

**Ground truth** is ``layersearch confirm`` (``layersearch.confirm``): a full
distillation of every mapping at 20x the quickstart proxy's distillation
tokens, each final student fine-tuned with 5 seeds on 4x the proxy's
fine-tuning examples (SST-2 and CoLA). A task counts only where the teacher's own score
(fine-tuned the same way, 5 seeds) has a 95% interval above 0. Two mappings
get a second distillation seed, for the spread between distillation runs.

**Fidelities** are the proxy at 1, 40 and 200 steps with its 3 fine-tune
seeds, and at 40 steps with 1 seed; and each readout (``tasks.readout``:
probe, agreement, and finetune itself) at 40 steps on 3 proxy slices, so
that the spread between distillation runs is in each of them; agreement also
after one step (is a verdict on one-step students one about final students?). For each: Kendall tau of its ranking of
the mappings against the ground truth's, with a 95% bootstrap interval
(fine-tune seeds and dev examples resampled, the same resample for every
mapping, as the pairing is); the compute ratio (seconds of a ground-truth
evaluation over seconds of this one, from the units' recorded times); and
the distillation gain: the mappings' mean fitness minus the untouched
init's (shared by all: ``proxy.init_layers`` is fixed), bootstrapped alike.

Stages run in order and each caches what it finishes (evaluation units in
``bench/results/ladder*/evaluations``, final students under ``outputs/``),
so a killed run continues where it stopped; the closing lines use whatever
is cached, and say how many mappings have a ground truth.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from layersearch.config import GROUND_TRUTH_MARGIN, load_config
from layersearch.fitness import local_device, spec_key, units_of
from layersearch.fitness.aggregate import task_scores, unit_order
from layersearch.fitness.record import Evaluation, unit_key, unpack_labels
from layersearch.fitness.spec import confirm_tasks, init_spec_key
from layersearch.fitness.stats import fitness_estimate, task_score
from layersearch.init import init_identity, proxy_init_config
from layersearch.mapping import HEURISTICS, Mapping, heuristic
from layersearch.search.cache import EvaluationCache
from layersearch.workflows.evaluate import random_mappings

CONFIG = "configs/quickstart.yaml"
BOOTSTRAP = 1000
BUDGETS = {
    # The quickstart proxy (40 steps of 16 x 64 tokens; 800 fine-tune examples, 3 seeds).
    # Traded to fit about 2 hours of this 2-core CPU (README, "The fidelity ladder"): 6 mappings, not 8,
    # and the ground truth on SST-2 and CoLA: MRPC's sentence pairs cost 3x SST-2's fine-tuning.
    "full": {"proxy_steps": [1, 40, 200], "anchor_steps": 40, "randoms": 2, "results": "bench/results/ladder",
             # The proxy this ladder first measured: fine-tuning on one slice (the quickstart has since
             # moved to the agreement readout on 3 slices, which the readout rows measure).
             "proxy": ["tasks.readout=finetune", "proxy.slice_seeds=[0]", "search.racing=null"],
             "truth": ["distill.train.max_steps=800", "distill.corpus_blocks=12800",
                       "distill.train.checkpoint_every=100", "confirm.tasks.finetune.train_examples=3200"],
             "truth_tasks": ["sst2", "cola"],
             # The deterministic readouts at the anchor budget: a unit is a slice, so 3 slices.
             "readouts": {"probe": ["tasks.readout=probe", "proxy.slice_seeds=[0,1,2]"],
                          "agreement": ["tasks.readout=agreement", "proxy.slice_seeds=[0,1,2]"],
                          # Fine-tuning on the same 3 slices: its noise with the distillation spread in it.
                          "finetune": ["proxy.slice_seeds=[0,1,2]"]},
             # The readout that qualified, also after one step: is a verdict on one-step students
             # (compare --set proxy.train.max_steps=1, issue 23) a verdict about final students?
             "readout_steps": {"agreement": [1]}},
    "quick": {"proxy_steps": [1, 2, 3], "anchor_steps": 3, "randoms": 0, "results": "bench/results/ladder-quick",
              "proxy": ["tasks.readout=finetune", "proxy.slice_seeds=[0]", "search.racing=null",
                        "tasks.finetune.train_examples=32", "tasks.finetune.dev_examples=64",
                        "proxy.slice_blocks=64"],
              "truth": ["distill.train.max_steps=60", "distill.corpus_blocks=960",
                        "confirm.tasks.finetune.train_examples=128", "confirm.tasks.finetune.dev_examples=64"],
              "truth_tasks": ["sst2", "mrpc"],
              "readouts": {"probe": ["tasks.readout=probe", "proxy.slice_seeds=[0,1]", "tasks.probe.train_examples=64"],
                           "agreement": ["tasks.readout=agreement", "proxy.slice_seeds=[0,1]",
                                         "tasks.agreement.heldout_blocks=32"],
                           "finetune": ["proxy.slice_seeds=[0,1]"]},
              "readout_steps": {"agreement": [1]}},
}
SPREAD = ("uniform", "upper")  # the mappings distilled with a second seed


def configs(budget: dict, extra: list[str]):
    """(proxy config at steps s, ground-truth config): the quickstart with the budget's overrides."""
    results = budget["results"]
    common = [f"search.cache_dir={results}/evaluations", f"tracking.uri=sqlite:///{results}/mlflow.db"]

    def proxy(steps: int, readout: str | None = None):
        chosen = budget["readouts"][readout] if readout else []
        return load_config(CONFIG, [*common, *budget["proxy"], f"proxy.train.max_steps={steps}", *chosen, *extra])

    base = proxy(budget["anchor_steps"])
    ft = base.tasks.finetune
    # The proxy's fine-tuning recipe, on more examples and seeds.
    truth = load_config(CONFIG, [
        *common, f"confirm.output_dir=outputs/{Path(results).name}/students",
        f"confirm.tasks.names=[{','.join(budget['truth_tasks'])}]", "confirm.tasks.init_baseline=false",
        f"confirm.tasks.finetune.learning_rate={ft.learning_rate}",
        f"confirm.tasks.finetune.batch_size={ft.batch_size}", f"confirm.tasks.finetune.seq_length={ft.seq_length}",
        f"confirm.tasks.finetune.epochs={ft.epochs}", "confirm.tasks.finetune.seeds=[0,1,2,3,4]",
        *budget["truth"], *extra])
    return proxy, truth


def mappings_for(cfg, count: int) -> list[tuple[str, Mapping]]:
    n = 6  # the offline teacher's depth
    out = [(name, heuristic(name, cfg.student.num_layers, n)) for name in HEURISTICS]
    for m in random_mappings(cfg, 4 * count, n, seed=0):
        if len(out) == len(HEURISTICS) + count:
            break
        if m not in [x for _, x in out]:
            out.append((",".join(map(str, m.genes)), m))
    return out


# --- stages -----------------------------------------------------------------

def proxy_stage(proxy, budget, mappings) -> None:
    from layersearch.workflows.evaluate import evaluate_all

    for steps in budget["proxy_steps"]:
        print(f"== proxy at {steps} steps", flush=True)
        evaluate_all(proxy(steps), [m for _, m in mappings], [lbl for lbl, _ in mappings])
    for readout, steps in readout_rungs(budget):
        print(f"== the {readout} readout at {steps} steps", flush=True)
        evaluate_all(proxy(steps, readout), [m for _, m in mappings], [lbl for lbl, _ in mappings])


def readout_rungs(budget) -> list[tuple[str, int]]:
    """(readout, steps): every readout at the anchor budget, then the extra step counts some get."""
    rungs = [(readout, budget["anchor_steps"]) for readout in budget["readouts"]]
    return rungs + [(r, s) for r, steps in budget.get("readout_steps", {}).items() for s in steps]


def truth_stage(truth, mappings, labels: list[str], seeds: int) -> None:
    import layersearch

    print(f"== ground truth: {', '.join(labels)} x {seeds} distillation seed(s)", flush=True)
    cfg = truth.model_copy(deep=True)
    cfg.confirm.distill_seeds = seeds
    layersearch.confirm(cfg, labels, resume=True, progress=False)


def teacher_stage(truth) -> Evaluation:
    """The teacher itself, fine-tuned as the final students are: which tasks carry signal."""
    from layersearch.confirm import FinalReadout
    from layersearch.models import load_teacher

    cache, ident = teacher_cache(truth)
    tasks = confirm_tasks(truth)
    units = [(0, f) for f in tasks.finetune.seeds]
    hit, partial = cache.lookup(ident, units, tasks.names)
    if hit is not None:
        return hit
    print("== the teacher's own scores", flush=True)
    from layersearch.confirm import new_record

    ev = new_record(ident, partial, cache.spec_key)
    todo = [f for _, f in units if unit_key(0, f) not in ev.units]
    FinalReadout(truth).score(ev, load_teacher(truth.teacher.model, truth.teacher.revision), 0, todo, False)
    cache.put(ev)
    return ev


def teacher_cache(truth):
    from layersearch.confirm import keys

    final_key, _ = keys(truth, local_device())
    return EvaluationCache(truth.search.cache_dir, f"teacher-{final_key}"), Mapping(tuple(range(1, 7)), 6)


# --- figures ----------------------------------------------------------------

def signal(ev: Evaluation, names: list[str]) -> dict[str, tuple[float, float, float]]:
    """Each task's teacher score with its 95% interval (mean, low, high)."""
    out = {}
    units = unit_order(ev)
    for t in names:
        e = fitness_estimate({t: ev.predictions(t, units)}, {t: unpack_labels(ev.dev_labels[t])})
        out[t] = (e.mean, e.low, e.high)
    return out


def unit_matrix(ev: Evaluation, units: list[str], tasks: list[str], counts: dict | None) -> np.ndarray:
    """[B+1, U] unit fitness: row 0 on the dev set as it is, rows 1.. on each bootstrap resample."""
    total = None
    for t in tasks:
        y = unpack_labels(ev.dev_labels[t])
        k = int(max(y.max(), max(ev.predictions(t, units).max(), 0))) + 1  # unused for real values
        rows = []
        for row in ev.predictions(t, units):
            rows.append(np.concatenate([[task_score(row, y, k)], task_score(row, y, k, counts[t])]))
        m = np.stack(rows, axis=1) / len(tasks)
        total = m if total is None else total + m
    return total


def bootstrap_counts(evs: list[Evaluation], tasks: list[str], reps: int, rng, shared: dict | None = None) -> dict:
    """Each task's dev-example resamples; a task already in ``shared`` with the same dev set keeps
    its resamples there, so the ground truth and a fidelity see the same draw of examples."""
    out = {}
    for t in tasks:
        n = len(evs[0].dev_labels[t])
        if shared is not None and t in shared and shared[t].shape[1] == n:
            out[t] = shared[t]
        else:
            out[t] = rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float32)
    return out


def fitness_draws(evs: list[Evaluation], units: list[str], tasks: list[str], counts: dict,
                  unit_draws: np.ndarray) -> np.ndarray:
    """[B+1, mappings]: mean fitness over the drawn units (row 0: every unit, as it is)."""
    out = []
    for ev in evs:
        mat = unit_matrix(ev, units, tasks, counts)  # [B+1, U]
        point = mat[0].mean()
        draws = np.take_along_axis(mat[1:], unit_draws, axis=1).mean(axis=1)
        out.append(np.concatenate([[point], draws]))
    return np.stack(out, axis=1)


def cost(ev: Evaluation, units: list[str]) -> float:
    """Seconds to compute these units: one distillation per slice (or seed), their fine-tunes.

    Each stage is priced at its median recorded time, not the sum of what was recorded:
    on a shared 2-core machine one run that waited behind another records many times its
    own cost (1,600 s for a distillation whose siblings took 530 s), and a ratio of sums
    would report that wait as compute.
    """
    distills = {ev.units[u]["slice_seed"]: ev.units[u].get("distill_s", 0.0) for u in units}
    tasks = {t for u in units for t in ev.units[u]["tasks"]}
    finetune = sum(statistics.median(ev.units[u]["tasks"][t]["seconds"] for u in units
                                     if t in ev.units[u]["tasks"]) * len(units) for t in tasks)
    return len(distills) * statistics.median(distills.values()) + finetune


def interval(draws: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def tau(a: np.ndarray, b: np.ndarray) -> float:
    t = kendalltau(a, b).statistic
    return float(t) if np.isfinite(t) else 0.0


def report(proxy, truth, budget, mappings) -> dict:
    from layersearch.confirm import distill_seeds, keys

    rng = np.random.default_rng(0)
    final_key, _ = keys(truth, local_device())
    gt_cache = EvaluationCache(truth.confirm.cache_dir or truth.search.cache_dir, final_key)
    tasks_cfg = confirm_tasks(truth)
    seed0 = distill_seeds(truth)[0]
    gt_units = [unit_key(seed0, f) for f in tasks_cfg.finetune.seeds]
    gt = {lbl: gt_cache.get(m) for lbl, m in mappings}
    have = [lbl for lbl, _ in mappings if gt[lbl] is not None and not gt[lbl].missing(gt_units)]
    out: dict = {"mappings": {lbl: str(m) for lbl, m in mappings}, "ground_truth_mappings": have}
    teacher, ident = teacher_cache(truth)
    tev = teacher.get(ident)
    tasks = list(tasks_cfg.names)
    if tev is not None and all(unit_key(0, f) in tev.units for f in tasks_cfg.finetune.seeds):
        sig = signal(tev, tasks_cfg.names)
        out["teacher"] = sig
        kept = [t for t in tasks if sig[t][1] > 0]
        for t, (mean, lo, hi) in sig.items():
            why = "signal" if lo > 0 else "no signal" + (" (left out of the ground truth)" if kept else "")
            print(f"task {t}: teacher {mean:.3f} [{lo:.3f}, {hi:.3f}] -> {why}")
        if not kept:
            print("no task carries signal at this budget, even for the teacher: every task is kept, and "
                  "the ground truth cannot rank the mappings")
        tasks = kept or tasks
    else:
        print("task signal: the teacher's scores are not cached yet; every ground-truth task is used")
    out["truth_tasks"] = tasks
    if len(have) < 3:
        print(f"ground truth: {len(have)} of {len(mappings)} mappings distilled so far; too few to rank")
        return out
    labels = have
    # Distillation-seed spread, where a mapping has more than one seed.
    sds = []
    for lbl in labels:
        ev = gt[lbl]
        by_seed: dict[int, list[float]] = {}
        scores = task_scores(ev, tasks)
        for i, u in enumerate(unit_order(ev)):
            by_seed.setdefault(ev.units[u]["slice_seed"], []).append(
                statistics.fmean(scores[t][i] for t in tasks))
        if len(by_seed) > 1:
            sd = statistics.stdev([statistics.fmean(v) for v in by_seed.values()])
            sds.append(sd)
            print(f"distillation seeds, {lbl}: " + ", ".join(
                f"seed {s} {statistics.fmean(v):.4f}" for s, v in sorted(by_seed.items())) + f" (sd {sd:.4f})")
    seed_sd = float(np.sqrt(np.mean(np.square(sds)))) if sds else float("nan")
    gt_evs = [gt[lbl] for lbl in labels]
    # Verdicts against uniform on the first distillation seed, with compare's statistics.
    from layersearch.fitness import compare, summarize

    restricted = [(lbl, summarize(gt[lbl].restricted(gt_units), tasks)) for lbl in labels]
    ref = [r for r in restricted if r[0] == "uniform"] or restricted[:1]
    comps = compare(ref[0], [r for r in restricted if r[0] != ref[0][0]], tasks, margin=GROUND_TRUTH_MARGIN)
    distinct = sum(c.verdict in ("better", "worse") for c in comps)
    gt_counts = bootstrap_counts(gt_evs, tasks, BOOTSTRAP, rng)
    gt_draws = fitness_draws(gt_evs, gt_units, tasks, gt_counts,
                             rng.integers(0, len(gt_units), (BOOTSTRAP, len(gt_units))))
    spread = float(np.std(gt_draws[0], ddof=1))
    gt_cost = statistics.median(cost(ev, gt_units) for ev in gt_evs)
    out["ground_truth"] = {lbl: float(v) for lbl, v in zip(labels, gt_draws[0], strict=True)}
    out["comparisons"] = [c.to_dict() for c in comps]
    line = (f"ground truth: {distinct} of {len(comps)} mappings distinguishable from uniform "
            f"(spread {spread:.4f}, distillation seed sd {seed_sd:.4f})")
    print(line)
    out["ground_truth_line"] = line
    # Each fidelity, on the same mappings.
    anchor = budget["anchor_steps"]
    fidelities = [(f"proxy-{s}-steps-3-seeds", s, None, None) for s in budget["proxy_steps"]]
    fidelities.append((f"proxy-{anchor}-steps-1-seed", anchor, 1, None))
    for readout, steps in readout_rungs(budget):
        fidelities.append((f"{readout}-{steps}-steps-{len(proxy(steps, readout).proxy.slice_seeds)}-slices",
                           steps, None, readout))
    lines = []
    for name, steps, nseeds, readout in fidelities:
        cfg = proxy(steps, readout)
        proxy_tasks = cfg.tasks.scored
        cache = EvaluationCache(cfg.search.cache_dir, spec_key(cfg, local_device()))
        units = [unit_key(s, f) for s, f in units_of(cfg)][:nseeds]
        evs = [cache.get(dict(mappings)[lbl]) for lbl in labels]
        init = EvaluationCache(cfg.search.cache_dir, init_spec_key(cfg, local_device())).get(
            init_identity(proxy_init_config(cfg), dict(mappings)["uniform"]))
        if any(ev is None or ev.missing(units) or not ev.ok for ev in evs):
            print(f"fidelity {name}: not every mapping is evaluated yet")
            continue
        counts = bootstrap_counts(evs, proxy_tasks, BOOTSTRAP, rng, shared=gt_counts)
        draws_idx = rng.integers(0, len(units), (BOOTSTRAP, len(units)))
        fid = fitness_draws(evs, units, proxy_tasks, counts, draws_idx)
        taus = np.array([tau(fid[b], gt_draws[b]) for b in range(1, BOOTSTRAP + 1)])
        t0 = tau(fid[0], gt_draws[0])
        lo, hi = interval(taus)
        ratio = gt_cost / statistics.median(cost(ev, units) for ev in evs)
        gain_text = "distillation gain not measured (no init baseline cached)"
        entry = {"tau": t0, "tau_ci": [lo, hi], "compute_ratio": ratio,
                 "fitness": {lbl: float(v) for lbl, v in zip(labels, fid[0], strict=True)}}
        if init is not None and not init.missing(units):
            base = fitness_draws([init], units, proxy_tasks, counts, draws_idx)[:, 0]
            gains = fid.mean(axis=1) - base
            glo, ghi = interval(gains[1:])
            gain_text = f"distillation gain {gains[0]:+.4f} [{glo:+.4f}, {ghi:+.4f}]"
            entry.update(gain=float(gains[0]), gain_ci=[glo, ghi], init_fitness=float(base[0]))
        ties = " (every mapping scores the same: no ranking)" if np.ptp(fid[0]) == 0 else ""
        line = (f"fidelity {name}: tau {t0:+.2f} [{lo:+.2f}, {hi:+.2f}]{ties} vs ground truth, "
                f"compute ratio {ratio:.1f}, {gain_text}")
        lines.append(line)
        out.setdefault("fidelities", {})[name] = entry
    print("\n" + "mapping".ljust(10) + "ground truth".rjust(14) + "".join(
        n.replace("proxy-", "").replace("-steps-", "/").replace("-seeds", "s").replace("-seed", "s")
        .replace("-slices", "sl").replace("agreement-", "agr ").replace("probe-", "prb ")
        .replace("finetune-", "ft ").rjust(10)
        for n in out.get("fidelities", {})))
    for lbl in sorted(labels, key=lambda x: -out["ground_truth"][x]):
        print(lbl.ljust(10) + f"{out['ground_truth'][lbl]:14.4f}" + "".join(
            f"{f['fitness'][lbl]:10.4f}" for f in out.get("fidelities", {}).values()))
    print()
    print(out["ground_truth_line"])
    for line in lines:
        print(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy budgets, same code (minutes)")
    ap.add_argument("--report", action="store_true", help="no new work: report what is cached")
    ap.add_argument("--set", action="append", default=[], help="an override for every config, KEY=VALUE")
    args = ap.parse_args()
    budget = BUDGETS["quick" if args.quick else "full"]
    proxy, truth = configs(budget, args.set)
    mappings = mappings_for(proxy(budget["anchor_steps"]), budget["randoms"])
    labels = [lbl for lbl, _ in mappings]
    if not args.report:
        truth_stage(truth, mappings, labels, 1)
        teacher_stage(truth)
        proxy_stage(proxy, budget, mappings)
        truth_stage(truth, mappings, [lbl for lbl in labels if lbl in SPREAD], 2)
    out = report(proxy, truth, budget, mappings)
    path = Path(budget["results"]) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
