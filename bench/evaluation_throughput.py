"""Whole proxy evaluations per hour: today's path, then each throughput change added one at a time.

    .venv/bin/python bench/evaluation_throughput.py [--single 2] [--pack 4] [--seeds 3]
    .venv/bin/python bench/evaluation_throughput.py --only-teacher-cache [--config CONFIG]  # row 8 alone

A whole evaluation is what a search pays per candidate: the proxy
distillation and every fine-tune (each proxy task x ``--seeds`` fine-tune
seeds), on the quickstart teacher, corpus slice and task data. Every row
runs in this process with one ``Evaluator`` (teacher and slice loaded once)
on the same mappings, and adds one change to the row above it:

1. one at a time, fp32, task data tokenised for every candidate and seed
   (the path before encodings were cached);
2. + task encodings cached in the evaluator (tokenised once, reused);
3. + bf16 autocast for distillation and fine-tuning;
4. + packed distillation: ``--pack`` students per teacher forward;
5. + packed fine-tuning: the pack's students fine-tuned as one vmapped model.

Rows 1-3 time ``--single`` evaluations, rows 4-5 one pack; each prints
evaluations per hour and its ratio to the row above and to row 1. Then:

6. the path ``precision: auto`` and ``packed: auto`` (with the config's
   ``ray.pack_size``) take on this machine; ``whole evaluation speedup: Nx``
   is that row against row 1, not the best row (bf16 is fastest on few CPUs
   and ``auto`` does not take it there);
7. the ``probe`` and ``agreement`` readouts on the same path, one slice each
   (a deterministic readout has one unit per slice): ``readout probe vs
   finetune, evaluations/h: Nx``.

Last, evidence per hour. A readout's worth is how soon it narrows a paired
difference, so from the fidelity ladder's cache (``bench/ladder.py``: every
mapping distilled on 3 slices, read out by each readout) it takes s, the sd
of one distillation run's paired difference against uniform (for finetune,
the run's seeds averaged: seeds within a run share its distillation, so the
run is the replicate), and t, this bench's seconds per run, and prints
``readout probe vs finetune, time to equal precision: Nx`` with
N = (t_finetune s_finetune^2) / (t_probe s_probe^2).

8. + teacher targets cached (``proxy.teacher_cache``, data/targets.py): the
   config's own readout on one slice, at ``precision: auto``, one at a time,
   live (the teacher runs every step) and then reading the slice's cached
   targets (built first, untimed: a search pays it once per slice). Ends with
   ``teacher targets cached vs live, whole evaluation: Nx``, the bound (a live
   evaluation's seconds over a student-only one's: live minus the teacher's
   forward passes over the same micro-batches, timed alone) and the disk MB
   per slice. Wall and CPU seconds (``time.process_time``) are both printed:
   on a shared machine the CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from layersearch.config import load_config
from layersearch.fitness import Evaluator
from layersearch.mapping import HEURISTICS, heuristic
from layersearch.readout import FinetuneReadout
from layersearch.readout.finetune import TaskEncodings

ROOT = Path(__file__).resolve().parents[1]


class Uncached(TaskEncodings):
    """Tokenises on every request, as each candidate's every fine-tune did before."""

    def train(self, task: str, seed: int):
        self._train.clear()
        return super().train(task, seed)

    def dev(self, task: str):
        self._dev.clear()
        return super().dev(task)

# The row set this bench times: the fine-tune readout on one proxy slice, whatever the config ships
# (the quickstart ships the agreement readout on 3 slices).
FINETUNE_ONE_SLICE = ["tasks.readout=finetune", "proxy.slice_seeds=[0]", "search.racing=null"]


def with_settings(cfg, precision: str, packed: bool):
    train = cfg.proxy.train.model_copy(update={"precision": precision})
    finetune = cfg.tasks.finetune.model_copy(update={"precision": precision, "packed": packed})
    return cfg.model_copy(update={
        "proxy": cfg.proxy.model_copy(update={"train": train}),
        "tasks": cfg.tasks.model_copy(update={"finetune": finetune})})


def timed(evaluator: Evaluator, mappings: list, pack: bool) -> float:
    """Seconds per whole evaluation of ``mappings``: all at once as a pack, or one by one."""
    start = time.perf_counter()
    results = evaluator.evaluate_pack(mappings) if pack else [evaluator.evaluate(m) for m in mappings]
    seconds = time.perf_counter() - start
    failed = [ev.status for ev in results if not ev.ok]
    if failed:
        raise SystemExit(f"an evaluation failed: {failed[0]}")
    return seconds / len(mappings)


def clocked(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def teacher_cache_row(config: str, single: int) -> None:
    """Row 8: the same evaluations live and with cached teacher targets (see the docstring)."""
    from layersearch.distill import micro_batch, total_steps
    from layersearch.features import extract
    from layersearch.precision import autocast

    cfg = load_config(config, ["proxy.slice_seeds=[0]", "search.racing=null", "proxy.teacher_cache=off"])
    evaluator = Evaluator(cfg, device="cpu" if not torch.cuda.is_available() else "cuda")
    m, n = cfg.student.num_layers, evaluator.num_teacher_layers
    mappings = list(dict.fromkeys(heuristic(h, m, n) for h in HEURISTICS))[:single]
    scfg = evaluator.slice_config(0)
    print(f"teacher targets: {cfg.tasks.readout} readout, one slice of {cfg.proxy.slice_blocks} blocks, "
          f"{cfg.proxy.train.max_steps} steps of {cfg.proxy.train.batch_size} x {cfg.corpus.seq_length}, "
          f"precision {scfg.proxy.train.precision}, {torch.get_num_threads()} threads; mappings "
          f"{[list(x.genes) for x in mappings]}", flush=True)
    live = clocked(lambda: timed(evaluator, mappings, False))
    evaluator.teacher_cache = True  # the same evaluator, now reading the slice's targets
    wall, cpu = clocked(lambda: evaluator.targets(0))
    entry = evaluator.targets(0).entry
    mb = entry.nbytes / 2**20
    print(f"teacher targets of one slice: {mb:.0f} MB on disk, {'built' if entry.built else 'found'} in "
          f"{wall:.1f} s ({cpu:.1f} CPU s)", flush=True)
    cached = clocked(lambda: timed(evaluator, mappings, False))
    # The teacher's share of a live evaluation: its forward passes over the same micro-batches.
    from layersearch.student import make_student

    data = evaluator.slice(0)
    _, loss, _ = make_student(scfg, evaluator.teacher, mappings[0], data, evaluator.pad)
    req, steps = loss.teacher_requirements(), total_steps(scfg.proxy.train, data.shape[1])

    def teacher_passes():
        with autocast(scfg.proxy.train.precision, torch.device(evaluator.device).type), torch.no_grad():
            for i in range(steps * scfg.proxy.train.grad_accum_steps):
                ids = micro_batch(data, i, scfg.proxy.train.batch_size, scfg.proxy.train.seed)
                extract(evaluator.teacher, ids, torch.ones_like(ids), req)

    teacher = clocked(teacher_passes)
    k = len(mappings)
    for label, (w, c) in (("live (the teacher runs every step)", live), ("+ teacher targets cached", cached)):
        print(f"{label:58s} {3600 * k / w:7.1f} evaluations/h  ({w / k:5.1f} s each, {c / k:5.1f} CPU s)  "
              f"{live[0] / w:5.2f}x live", flush=True)
    print(f"teacher forward alone per evaluation: {teacher[0]:.1f} s ({teacher[1]:.1f} CPU s)")
    bound = (live[0] / k) / max(live[0] / k - teacher[0], 1e-9)
    bound_cpu = (live[1] / k) / max(live[1] / k - teacher[1], 1e-9)
    print(f"teacher targets cached vs live, whole evaluation: {live[0] / cached[0]:.2f}x "
          f"(CPU seconds {live[1] / cached[1]:.2f}x); bound, live over student-only: {bound:.2f}x "
          f"(CPU {bound_cpu:.2f}x); disk {mb:.0f} MB per slice")


def run_sd(cfg, cache_dir: Path) -> tuple[float, int] | None:
    """Pooled sd of a distillation run's paired difference against uniform, from cached
    evaluations of ``cfg`` (every mapping there with every unit); None when too few."""
    import json

    import numpy as np

    from layersearch.fitness import local_device, spec_key, units_of
    from layersearch.fitness.aggregate import unit_fitness
    from layersearch.fitness.record import Evaluation, unit_key

    folder = cache_dir / spec_key(cfg, local_device())
    units = [unit_key(s, f) for s, f in units_of(cfg)]
    runs = {}
    for path in folder.glob("*.json"):
        ev = Evaluation.from_dict(json.loads(path.read_text()))
        if ev.ok and all(u in ev.units for u in units):
            fit = unit_fitness(ev.restricted(units), cfg.tasks.scored, cfg.tasks.scored_weights)
            runs[tuple(ev.genes)] = np.array([np.mean([fit[unit_key(s, f)] for f in cfg.tasks.unit_seeds])
                                              for s in cfg.proxy.slice_seeds])
    ref = runs.pop((2, 4, 6), None)
    if ref is None or len(runs) < 2 or len(ref) < 2:
        return None
    diffs = [r - ref for r in runs.values()]
    # Each mapping's own mean difference is its effect; the spread around it is the noise.
    pooled = np.concatenate([d - d.mean() for d in diffs])
    dof = sum(len(d) - 1 for d in diffs)
    return float(np.sqrt((pooled**2).sum() / dof)), len(diffs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--single", type=int, default=2, help="evaluations timed in each one-at-a-time row")
    ap.add_argument("--pack", type=int, default=4, help="students per pack (K)")
    ap.add_argument("--seeds", type=int, default=3, help="fine-tune seeds per evaluation")
    ap.add_argument("--only-teacher-cache", action="store_true", help="time row 8 (teacher targets) alone")
    args = ap.parse_args()
    if args.only_teacher_cache:
        teacher_cache_row(args.config, args.single)
        return
    # Rows 1-7 run the teacher live, as they always did; row 8 turns the cache on.
    cfg = load_config(args.config, [*FINETUNE_ONE_SLICE, f"tasks.finetune.seeds={list(range(args.seeds))}",
                                    "proxy.teacher_cache=off"])
    evaluator = Evaluator(cfg, device="cpu" if not torch.cuda.is_available() else "cuda")
    m, n = cfg.student.num_layers, evaluator.num_teacher_layers
    mappings = list(dict.fromkeys(heuristic(h, m, n) for h in HEURISTICS))
    if len(mappings) < args.pack:
        raise SystemExit(f"only {len(mappings)} distinct heuristic mappings for --pack {args.pack}")
    mappings = mappings[: args.pack]
    print(f"{evaluator.device}, {torch.get_num_threads()} threads; a whole evaluation = distillation "
          f"({cfg.proxy.train.max_steps} steps) + {len(cfg.tasks.names)} tasks x {args.seeds} seeds "
          f"({cfg.tasks.finetune.train_examples} examples each); mappings {[list(x.genes) for x in mappings]}",
          flush=True)

    from layersearch.precision import cpu_has_native_bf16

    # bf16 only where it is native: emulated bf16 (a CPU without AVX512-BF16 or AMX) is slower than
    # fp32, auto never takes it there, and its rows would only time the emulation.
    bf16 = evaluator.device != "cpu" or cpu_has_native_bf16()
    half = "bf16" if bf16 else "fp32"
    rows = [
        ("one at a time, fp32, task data tokenised per fine-tune", "fp32", False, False, Uncached),
        ("+ task encodings cached", "fp32", False, False, TaskEncodings),
        *([("+ bf16 autocast", "bf16", False, False, TaskEncodings)] if bf16 else []),
        (f"+ packed distillation (K={args.pack})", half, True, False, TaskEncodings),
        (f"+ packed fine-tuning (K={args.pack})", half, True, True, TaskEncodings),
    ]
    if not bf16:
        print("no native bf16 on this CPU: the bf16 row is left out and the packed rows run in fp32", flush=True)
    cached = TaskEncodings(evaluator.tokenizer, evaluator.datasets, cfg.tasks.finetune)
    for task in cfg.tasks.names:  # the steady state of an evaluator: every encoding made once
        cached.dev(task)
        for seed in cfg.tasks.finetune.seeds:
            cached.train(task, seed)
    base = prev = None
    rates = []
    for label, precision, pack, packed_ft, encodings in rows:
        evaluator.cfg = with_settings(cfg, precision, packed_ft)
        evaluator.encoded = cached if encodings is TaskEncodings else Uncached(
            evaluator.tokenizer, evaluator.datasets, cfg.tasks.finetune)
        evaluator.readout = FinetuneReadout(evaluator.cfg.tasks, evaluator.tokenizer, evaluator.encoded,
                                            evaluator.device)
        seconds = timed(evaluator, mappings if pack else mappings[: args.single], pack)
        rate = 3600 / seconds
        base, prev = base or rate, prev or rate
        print(f"{label:58s} {rate:7.1f} evaluations/h  ({seconds:5.1f} s each)  "
              f"{rate / prev:5.2f}x prev  {rate / base:5.2f}x baseline", flush=True)
        prev = rate
        rates.append(rate)
    # 6. What auto does here.
    from layersearch.precision import resolve_precision

    auto_precision = resolve_precision("auto", torch.device(evaluator.device).type)
    evaluator.cfg = with_settings(cfg, "auto", cfg.tasks.finetune.packed)
    evaluator.encoded = cached
    evaluator.readout = FinetuneReadout(evaluator.cfg.tasks, evaluator.tokenizer, cached, evaluator.device)
    k = evaluator.suggest_pack_size() if cfg.ray.pack_size == "auto" else cfg.ray.pack_size
    label = (f"the path auto takes here ({auto_precision}, pack {k}"
             f"{', packed fine-tuning' if evaluator.packed_finetune else ''})")
    seconds = timed(evaluator, mappings[:k] if k > 1 else mappings[: args.single], k > 1)
    auto_rate = 3600 / seconds
    t_run = {"finetune": seconds}
    print(f"{label:58s} {auto_rate:7.1f} evaluations/h  ({seconds:5.1f} s each)  "
          f"{auto_rate / base:5.2f}x baseline", flush=True)
    # 7. The deterministic readouts, on the same path: one slice, one unit.
    readout_rate = {}
    for readout in ("probe", "agreement"):
        rcfg = load_config(args.config, ["proxy.slice_seeds=[0]", "search.racing=null", f"tasks.readout={readout}",
                                         "proxy.teacher_cache=off"])
        other = Evaluator(rcfg, device=evaluator.device)
        seconds = timed(other, mappings[: args.single], False)
        readout_rate[readout] = 3600 / seconds
        t_run[readout] = seconds
        print(f"{'readout ' + readout + ' (one slice)':58s} {3600 / seconds:7.1f} evaluations/h  "
              f"({seconds:5.1f} s each)  {3600 / seconds / auto_rate:5.2f}x finetune", flush=True)
    print(f"whole evaluation speedup: {auto_rate / base:.2f}x (the auto path; the best row "
          f"{max(rates) / base:.2f}x)")
    print(f"readout probe vs finetune, evaluations/h: {readout_rate['probe'] / auto_rate:.2f}x")
    # Evidence per hour, from the fidelity ladder's 3-slice evaluations.
    ladder = ROOT / "bench" / "results" / "ladder" / "evaluations"
    sd = {}
    for readout, extra in (("finetune", ["tasks.readout=finetune"]), ("probe", ["tasks.readout=probe"]),
                           ("agreement", ["tasks.readout=agreement"])):
        rcfg = load_config(args.config, ["proxy.slice_seeds=[0,1,2]", *extra, "proxy.teacher_cache=off"])
        found = run_sd(rcfg, ladder)
        if found is None:
            print(f"{readout}: the ladder's 3-slice evaluations are not cached; run bench/ladder.py")
            continue
        sd[readout] = found[0]
        print(f"{readout}: sd of a run's paired difference {found[0]:.4f} ({found[1]} mappings x 3 slices), "
              f"{t_run[readout]:.1f} s per run")
    for readout in ("probe", "agreement"):
        if "finetune" in sd and readout in sd and sd[readout] > 0:
            n = (t_run["finetune"] * sd["finetune"] ** 2) / (t_run[readout] * sd[readout] ** 2)
            print(f"readout {readout} vs finetune, time to equal precision: {n:.1f}x")
    teacher_cache_row(args.config, args.single)


if __name__ == "__main__":
    main()
