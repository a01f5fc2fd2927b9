"""Ground truth for a few mappings: full distillations, each final student scored downstream.

``workflows.confirm.confirm`` distils every mapping with the ``distill`` section's trainer
(``workflows.distill.distill``: the same Ray Train workers, checkpoints and
resume), once per distillation seed (``distill.train.seed`` + 0, 1, ...,
``confirm.distill_seeds`` of them; the seed also draws the corpus blocks), then
fine-tunes each final student on ``confirm.tasks`` with every fine-tune seed.
A unit of evidence is one (distillation seed, fine-tune seed) pair, stored
like a proxy evaluation's (slice seed = distillation seed), so intervals,
paired differences and verdicts are ``compare``'s.

What is done is kept: a final student is one model directory per (mapping,
distillation seed) under ``confirm.output_dir``, and its downstream units go
to the evaluation cache under the final spec key. A rerun reads both and only
does what is missing; a run killed during a distillation continues it with
``--resume``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

from layersearch.config import Config
from layersearch.distill.job import write_json_atomic
from layersearch.fitness.evaluator import record_unit
from layersearch.fitness.record import Evaluation, unit_key
from layersearch.fitness.spec import confirm_tasks, final_init_spec_key, final_spec_key, final_student_key
from layersearch.mapping import Mapping

# Inits that read no corpus data (ETD-Impt's importance and WID do): one student for every
# distillation seed, so its baseline units are scored once and shared.
DATA_FREE_INITS = ("random", "copy")


def distill_seeds(cfg: Config) -> list[int]:
    base = cfg.distill.train.seed
    return [base + i for i in range(cfg.confirm.distill_seeds)]


def seed_config(cfg: Config, seed: int) -> Config:
    """The config of one distillation run: its seed decides the corpus blocks and the step order."""
    out = copy.deepcopy(cfg)
    out.distill.train.seed = seed
    return out


def final_units(cfg: Config) -> list[tuple[int, int]]:
    return [(s, f) for s in distill_seeds(cfg) for f in cfg.confirm.tasks.finetune.seeds]


@dataclass
class FinalStudents:
    """Where one config's final students live: ``<output_dir>/<student key>/<mapping>-d<seed>``
    (the key names what decides the weights, so other downstream tasks reuse the students)."""

    root: Path

    @classmethod
    def of(cls, cfg: Config, device: str) -> FinalStudents:
        return cls(Path(cfg.confirm.output_dir) / final_student_key(cfg, device))

    def path(self, mapping: Mapping, seed: int) -> Path:
        return self.root / f"{mapping.key.replace(':', '_')}-d{seed}"

    def note(self, mapping: Mapping, seed: int, run_id: str, seconds: float, **known: float) -> None:
        """Beside the model directory: its distill run and training seconds (the unit's cost), and
        whatever else the trainer knew (the ladder's: ``steps``, ``train_cpu_seconds``, since a
        shared machine's wall seconds mislead, and ``unclocked_steps``)."""
        write_json_atomic(self._note_path(mapping, seed), {"run_id": run_id, "train_seconds": seconds, **known})

    def seconds(self, mapping: Mapping, seed: int) -> float:
        """The training seconds of a finished student (0 where no note was kept)."""
        return self.read(mapping, seed, "train_seconds") or 0.0

    def cpu_seconds(self, mapping: Mapping, seed: int) -> float | None:
        """The training CPU seconds of a finished student (None where the note holds none)."""
        return self.read(mapping, seed, "train_cpu_seconds")

    def read(self, mapping: Mapping, seed: int, field: str) -> float | None:
        """One number from a finished student's note; None where it is missing or unreadable."""
        try:
            return float(json.loads(self._note_path(mapping, seed).read_text())[field])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _note_path(self, mapping: Mapping, seed: int) -> Path:
        out = self.path(mapping, seed)
        return out.with_name(out.name + ".json")

    def done(self, mapping: Mapping, seed: int) -> bool:
        """A finished distillation: its model directory, and no checkpoints of a stopped run."""
        out = self.path(mapping, seed)
        return (out / "config.json").is_file() and not out.with_name(out.name + ".checkpoints").exists()


class FinalReadout:
    """Tokenizer and ``confirm.tasks`` data, loaded once; fine-tunes final students into units."""

    def __init__(self, cfg: Config, device: str | None = None):
        from layersearch.data.tasks import load_task
        from layersearch.models import load_tokenizer
        from layersearch.readout.finetune import TaskEncodings

        self.cfg = cfg
        self.tasks = confirm_tasks(cfg)
        from layersearch.fitness.spec import evaluation_device

        self.device = device or evaluation_device(cfg)  # one policy for every command (spec.py)
        self.tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
        self.datasets = {n: load_task(n, self.tasks.source) for n in self.tasks.names}
        self.encoded = TaskEncodings(self.tokenizer, self.datasets, self.tasks.finetune)
        self.teacher = None  # loaded only to build an init baseline

    def score(self, ev: Evaluation, encoder, seed: int, finetune_seeds: list[int], progress: bool,
              distill_s: float = 0.0) -> None:
        """Fine-tune ``encoder`` with each seed on every task; one unit (seed, fine-tune seed) each."""
        from layersearch.readout import FinetuneReadout

        t0 = time.perf_counter()
        # The proxy's fine-tune readout, on confirm's own tasks and budget.
        results = FinetuneReadout(self.tasks, self.tokenizer, self.encoded, self.device).score(
            encoder.to(self.device), finetune_seeds, progress)
        ev.timings["finetune_s"] = ev.timings.get("finetune_s", 0.0) + time.perf_counter() - t0
        for r in results:
            record_unit(ev, seed, distill_s, r, curves=seed == distill_seeds(self.cfg)[0])

    def init_student(self, mapping: Mapping, seed: int):
        """``mapping``'s final student as ``distill`` builds it, before its first step."""
        from layersearch.data.blocks import open_blocks
        from layersearch.models import load_teacher_for
        from layersearch.student import finish_student, make_student

        cfg = seed_config(self.cfg, seed)
        self.teacher = self.teacher or load_teacher_for(cfg)
        data = open_blocks(cfg.corpus, self.tokenizer, cfg.distill.corpus_blocks, seed)
        student, _, _ = make_student(cfg, self.teacher, mapping, data, self.tokenizer.pad_token_id or 0,
                                     self.tokenizer)
        return finish_student(student).base_model

    def evaluate_init(self, mapping: Mapping, ident: Mapping, prior: Evaluation | None, spec: str,
                      progress: bool) -> Evaluation:
        """The init baseline of the final students: built, not trained, scored on the same units."""
        ev = new_record(ident, prior, spec)
        seeds = distill_seeds(self.cfg)
        shared = self.cfg.student.init.method in DATA_FREE_INITS
        for i, s in enumerate(seeds):
            todo = [f for f in self.tasks.finetune.seeds if unit_key(s, f) not in ev.units]
            if not todo:
                continue
            if shared and i > 0 and all(unit_key(seeds[0], f) in ev.units for f in todo):
                for f in todo:  # the same untouched student: its units under this seed's name
                    ev.units[unit_key(s, f)] = {**ev.units[unit_key(seeds[0], f)], "slice_seed": s}
                continue
            self.score(ev, self.init_student(mapping, s), s, todo, progress)
        from layersearch.fitness.aggregate import summarize

        return summarize(ev, self.tasks.names, self.tasks.weights)


def new_record(mapping: Mapping, prior: Evaluation | None, spec: str) -> Evaluation:
    """A record of ``mapping`` under ``spec`` holding ``prior``'s units."""
    ev = Evaluation(list(mapping.genes), mapping.num_teacher_layers, spec,
                    init=None if mapping.init is None else list(mapping.init))
    if prior is not None and prior.ok and prior.spec_key == spec:
        ev.units = copy.deepcopy(prior.units)
        ev.dev_labels, ev.majority = dict(prior.dev_labels), dict(prior.majority)
    return ev


def keys(cfg: Config, device: str) -> tuple[str, str]:
    """(final spec key, final init spec key) of this config on ``device``."""
    return final_spec_key(cfg, device), final_init_spec_key(cfg, device)


# ``layersearch.confirm(...)`` runs the workflow (the Python API): see layersearch.workflows.callable.
from layersearch.workflows.callable import make_callable  # noqa: E402

make_callable(__name__, "layersearch.workflows.confirm", "confirm")
