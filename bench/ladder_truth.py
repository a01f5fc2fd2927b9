"""The ladder's ground truth where a CPU must afford it: every mapping's final student of one
distillation seed trained together, one teacher pass per batch.

``confirm`` distils each mapping alone (``distill/job.py``: ``torch.manual_seed(init seed)``,
``make_student``, ``train`` on the seed's corpus blocks). Here the same students, losses, blocks
and ``distill.train`` settings go to ``distill.packed.train_packed``, which gives each member the
step order and random stream ``train`` would (equal within float tolerance, tests/unit/test_packed),
so the students are confirm's at a twelfth of the teacher passes. Each student is also saved at
half the steps of the same run (its learning rate not yet decayed): the stability line compares
the two. Then every student is fine-tuned as ``confirm`` does (``FinalReadout``) and its units are
cached per (mapping, distillation seed) under the stage keys ``truth:truth`` and ``truth:half``.

What is kept: a finished pack's students (model directories, written atomically, with a note of
their training seconds), the pack's checkpoints every 25 steps while it trains (a rerun resumes from
them exactly, ``train_packed``), and each student's units: a kill loses at most 25 steps or one
student's fine-tunes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

PACKED = "packed-"
CHECKPOINT_EVERY = 25  # the stage keys' prefix: these records are not confirm's own


def student_roots(cfg) -> tuple[Path, Path]:
    """(full, half) budget folders of the final students."""
    from layersearch.confirm import FinalStudents
    from layersearch.fitness import local_device

    full = FinalStudents.of(cfg, local_device(cfg)).root
    return full.with_name(PACKED + full.name), full.with_name(PACKED + full.name + "-half")


def stage_key(cfg, kind: str) -> str:
    from layersearch.confirm import keys
    from layersearch.fitness import local_device

    return PACKED + kind + "-" + keys(cfg, local_device(cfg))[0]


def distil_seed(cfg, mappings: list, seed: int, roots: tuple[Path, Path], say=print) -> None:
    """Train every mapping's student of distillation ``seed`` in one pack; save at half and full steps."""
    import torch

    from layersearch.confirm import FinalStudents, seed_config
    from layersearch.data.blocks import open_blocks
    from layersearch.distill import total_steps
    from layersearch.distill.packed import train_packed
    from layersearch.export import save_model_dir
    from layersearch.models import load_teacher_for, load_tokenizer
    from layersearch.student import finish_student, make_student

    cfg = seed_config(cfg, seed)
    full, half = FinalStudents(roots[0]), FinalStudents(roots[1])
    todo = [m for m in mappings if not (full.done(m, seed) and half.done(m, seed))]
    if not todo:
        return
    teacher = load_teacher_for(cfg)
    tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
    data = open_blocks(cfg.corpus, tokenizer, cfg.distill.corpus_blocks, seed)
    pad = tokenizer.pad_token_id or 0
    students, losses = [], []
    for m in todo:
        torch.manual_seed(cfg.student.init.seed)  # as the distill job seeds each student
        s, loss, _ = make_student(cfg, teacher, m, data, pad, tokenizer)
        students.append(s)
        losses.append(loss)
    steps = total_steps(cfg.distill.train, data.shape[1])
    mid = steps // 2
    say(f"  distillation seed {seed}: {len(todo)} students packed, {steps} steps", flush=True)
    # Checkpoints every 25 steps (12 students' weights and AdamW states, ~2 GB): a kill loses at most 25.
    ckpt = roots[0].with_name(roots[0].name + f"-d{seed}.checkpoints")
    clock = Clock(ckpt / "clock.json")

    def save(where: FinalStudents, step: int) -> None:
        wall, cpu = (x / len(todo) for x in clock.totals())
        for m, s in zip(todo, students, strict=True):
            if where.done(m, seed):
                continue
            out = where.path(m, seed)
            mapping_json = json.dumps(m.to_json(cfg.teacher.model, list(losses[0].weights)), indent=2)
            save_model_dir(finish_student(s), tokenizer, out,
                           {"mapping.json": mapping_json, "layersearch.yaml": cfg.to_yaml()})
            where.note(m, seed, "packed", wall, steps=step, train_cpu_seconds=cpu,
                       unclocked_steps=clock.unclocked)
        say(f"  distillation seed {seed}: step {step} saved ({wall:.0f} s, {cpu:.0f} CPU s per student"
            + (f"; its first {clock.unclocked} steps unclocked" if clock.unclocked else "") + ")", flush=True)

    def on_step(step: int) -> None:
        clock.tick(step, step % CHECKPOINT_EVERY == 0)
        if step == mid:
            save(half, step)

    results = train_packed(students, teacher, losses, data, cfg.distill.train, pad_token_id=pad, on_step=on_step,
                           checkpoint_dir=ckpt, checkpoint_every=CHECKPOINT_EVERY)
    for m, r in zip(todo, results, strict=True):
        if isinstance(r, Exception):  # a diverged student: the rest of the pack is kept
            say(f"  {m}: {r}", flush=True)
    ok = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    todo, students = [todo[i] for i in ok], [students[i] for i in ok]
    save(full, steps)
    shutil.rmtree(ckpt, ignore_errors=True)


class Clock:
    """A pack's wall and CPU seconds since its step 0, across kills: the totals at each checkpointed
    step go to a file beside the checkpoints, and a resumed process adds its own seconds to those of
    the step it resumed from. ``unclocked``: the steps before a resume whose totals were never kept
    (a checkpoint written just before a kill, or by older code); their seconds are missing."""

    def __init__(self, path: Path):
        self.path = path
        self.saved = json.loads(path.read_text()) if path.is_file() else {}
        self.base, self.unclocked = (0.0, 0.0), 0
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.started = False

    def tick(self, step: int, checkpointed: bool) -> None:
        """Called after each step; the first call learns the step this process resumed from."""
        if not self.started:
            self.started, resumed = True, step - 1
            if resumed and str(resumed) in self.saved:
                self.base = tuple(self.saved[str(resumed)])
            else:
                self.unclocked = resumed
        if checkpointed and self.path.parent.is_dir():
            from layersearch.distill.job import write_json_atomic

            self.saved[str(step)] = list(self.totals())
            write_json_atomic(self.path, self.saved)

    def totals(self) -> tuple[float, float]:
        return (self.base[0] + time.perf_counter() - self.wall0, self.base[1] + time.process_time() - self.cpu0)


def distill_cpu_seconds(students, m, seed: int) -> tuple[float | None, int]:
    """A student's distillation CPU seconds, its unclocked first steps priced at the rate the rest
    ran at (the measured part times steps over measured steps), and how many steps were priced."""
    cpu, steps = students.cpu_seconds(m, seed), students.read(m, seed, "steps")
    unclocked = int(students.read(m, seed, "unclocked_steps") or 0)
    if cpu is None or not unclocked or not steps or unclocked >= steps:
        return cpu, 0
    return cpu * steps / (steps - unclocked), unclocked


def score(cfg, mappings: list, root: Path, key: str, say=print) -> None:
    """Fine-tune every finished student under ``root`` (confirm's readout); units cached under ``key``."""
    from transformers import AutoModel

    from layersearch.confirm import FinalReadout, FinalStudents, distill_seeds, final_units, new_record
    from layersearch.fitness.record import unit_key
    from layersearch.fitness.spec import confirm_tasks
    from layersearch.search.cache import EvaluationCache

    tasks = confirm_tasks(cfg)
    cache = EvaluationCache(cfg.confirm.cache_dir or cfg.search.cache_dir, key)
    students, readout = FinalStudents(root), None
    for m in mappings:
        hit, partial = cache.lookup(m, final_units(cfg), tasks.names, tasks.weights)
        if hit is not None:
            continue
        ev = new_record(m, partial, key)
        for seed in distill_seeds(cfg):
            todo = [f for f in tasks.finetune.seeds if unit_key(seed, f) not in ev.units]
            if not todo or not students.done(m, seed):
                continue
            readout = readout or FinalReadout(cfg)
            cpu0 = time.process_time()
            readout.score(ev, AutoModel.from_pretrained(students.path(m, seed)), seed, todo, False,
                          students.seconds(m, seed))
            cpu, priced = distill_cpu_seconds(students, m, seed)
            for f in todo:  # CPU seconds beside the wall seconds the units record
                ev.units[unit_key(seed, f)]["distill_cpu_s"] = cpu
                if priced:
                    ev.units[unit_key(seed, f)]["distill_cpu_priced_steps"] = priced
                ev.units[unit_key(seed, f)]["finetune_cpu_s"] = (time.process_time() - cpu0) / len(todo)
            cache.put(ev)
            say(f"  scored {m} distillation seed {seed}", flush=True)


def packed_truth(ladder: dict, cfg, specs: list[tuple[str, str]], note_key, say=print,
                 shard: tuple[int, int] | None = None) -> None:
    """The ``truth`` and ``half`` stages of a ladder together: distil, then score both budgets.

    ``shard`` (i, n): distil nothing, score the finished students of every n-th mapping from the
    i-th: n processes of one thread each use small cores better than one of n threads, and they
    may run beside the process that distils the next seed."""
    from layersearch.confirm import distill_seeds
    from layersearch.models import load_teacher_config
    from layersearch.resolve import resolve_any_mapping

    n = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
    mappings = [resolve_any_mapping(spec, cfg, n) for _, spec in specs]
    roots = student_roots(cfg)
    keys = {kind: stage_key(cfg, kind) for kind in ("truth", "half")}
    for kind, key in keys.items():
        note_key(ladder, f"truth:{kind}", {"key": key, "tasks": list(cfg.confirm.tasks.names),
                                           "steps": cfg.distill.train.max_steps // (2 if kind == "half" else 1),
                                           "trainer": "packed (bench/ladder_truth.py)"})
    say(f"== ground truth (packed): {len(mappings)} mappings x {cfg.confirm.distill_seeds} distillation run(s), "
        f"{cfg.distill.train.max_steps} steps, saved at half and full", flush=True)
    if shard is None:
        for seed in distill_seeds(cfg):
            distil_seed(cfg, mappings, seed, roots, say)
    else:  # no distilling: the students finished so far (another process may be distilling the rest)
        mappings = mappings[shard[0]::shard[1]]
    for kind, root in zip(("truth", "half"), roots, strict=True):
        say(f"== scoring the {kind} students", flush=True)
        score(cfg, mappings, root, keys[kind], say)
