"""What a mapping is worth: proxy distillation, then three proxy fine-tunes.

An ``Evaluator`` loads the teacher, tokenizer, proxy slice and task data once
and evaluates any number of mappings against them. An evaluation never raises
for a bad candidate: a diverging or crashing one comes back with status
``failed: <why>`` and no fitness, so a search keeps going.

The proxy spec is everything that fixes a fitness value; its hash plus the
mapping's key is the evaluation's identity, used by the cache so that no
(mapping, spec) pair is ever evaluated twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch

from layersearch.config import Config
from layersearch.mapping import Mapping

SPEC_VERSION = 2  # bump when evaluation code changes what a spec's fitness means


def proxy_spec(cfg: Config) -> dict:
    """The config fields that decide a fitness value (nothing about search, Ray or MLflow)."""
    from layersearch.data.slices import corpus_identity

    data = cfg.to_dict()
    corpus = {k: v for k, v in data["corpus"].items() if k != "cache_dir"}
    corpus["identity"] = corpus_identity(cfg.corpus)
    return {
        "version": SPEC_VERSION,
        "teacher": data["teacher"],
        "student": data["student"],
        "objective": data["objective"],
        "corpus": corpus,
        "proxy": data["proxy"],
        "tasks": data["tasks"],
    }


def spec_key(cfg: Config) -> str:
    blob = json.dumps(proxy_spec(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluation_key(spec: str, mapping: Mapping) -> str:
    return f"{spec}/{mapping.key}"


@dataclass
class Evaluation:
    genes: list[int]
    num_teacher_layers: int
    spec_key: str
    status: str = "ok"  # or "failed: <why>"
    fitness: float | None = None
    fitness_std: float | None = None  # across fine-tune seeds
    scores: dict[str, float] = field(default_factory=dict)  # task -> mean headline score
    scores_std: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # "<task>/<metric>" -> mean
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    error: str = ""  # the traceback of a failed evaluation, for the run's artifacts

    # Failures that the same inputs would reproduce, so caching them is safe; a
    # lost worker or an out-of-memory error is worth another try.
    DETERMINISTIC_FAILURES = ("DivergenceError", "FinetuneDivergence", "MappingError",
                              "ObjectiveError", "InitError", "ModelError")

    @property
    def cacheable(self) -> bool:
        return self.ok or any(f"failed: {n}" in self.status for n in self.DETERMINISTIC_FAILURES)

    @property
    def mapping(self) -> Mapping:
        return Mapping(tuple(self.genes), self.num_teacher_layers)

    @property
    def key(self) -> str:
        return evaluation_key(self.spec_key, self.mapping)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Evaluation:
        data = dict(data)
        data["curves"] = {k: [tuple(p) for p in v] for k, v in data.get("curves", {}).items()}
        return cls(**data)


def aggregate(names: list[str], weights: list[float] | None, results) -> dict:
    """Per-task means and spreads over fine-tune seeds, and the weighted fitness."""
    weights = weights or [1.0] * len(names)
    by_task = {n: [r for r in results if r.task == n] for n in names}
    seeds = sorted({r.seed for r in results})
    scores = {n: statistics.fmean(r.score for r in rs) for n, rs in by_task.items()}
    scores_std = {n: statistics.pstdev([r.score for r in rs]) for n, rs in by_task.items()}
    metrics: dict[str, float] = {}
    for n, rs in by_task.items():
        for metric in rs[0].metrics:
            metrics[f"{n}/{metric}"] = statistics.fmean(r.metrics[metric] for r in rs)
    total = sum(weights)

    def weighted(per_task: dict[str, float]) -> float:
        return sum(w * per_task[n] for n, w in zip(names, weights, strict=True)) / total

    # The spread of the fitness itself: one fitness per seed, then their deviation.
    per_seed = [weighted({n: next(r.score for r in by_task[n] if r.seed == s) for n in names})
                for s in seeds]
    return {"scores": scores, "scores_std": scores_std, "metrics": metrics,
            "fitness": weighted(scores), "fitness_std": statistics.pstdev(per_seed)}


class Evaluator:
    """Teacher, tokenizer, proxy slice and task data, loaded once; evaluates mappings."""

    def __init__(self, cfg: Config, device: str | None = None):
        from layersearch.data.slices import get_slice
        from layersearch.data.tasks import load_task
        from layersearch.models import load_teacher, load_tokenizer

        self.cfg = cfg
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.spec_key = spec_key(cfg)
        self.teacher = load_teacher(cfg.teacher.model, cfg.teacher.revision, attentions=False,
                                    mlm_head=cfg.objective.terms.get("logit_kd", 0) > 0)
        self.tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
        self.pad = self.tokenizer.pad_token_id or 0
        self.slice = get_slice(cfg.corpus, self.tokenizer, cfg.proxy.slice_blocks,
                               cfg.proxy.slice_seed)
        self.datasets = {n: load_task(n, cfg.tasks.source) for n in cfg.tasks.names}
        self.num_teacher_layers = self.teacher.config.num_hidden_layers

    def suggest_pack_size(self, cap: int = 16) -> int:
        """How many students to pack: from free GPU memory, or 4 on a CPU.

        A student's training state is about 16 bytes per parameter (weights,
        gradients, two Adam moments); activations are allowed as much again.
        """
        if self.device != "cuda":
            return 4
        from layersearch.models import student_config

        scfg = student_config(self.teacher.config, self.cfg.student)
        per_layer = 4 * scfg.hidden_size ** 2 + 2 * scfg.hidden_size * scfg.intermediate_size
        params = scfg.vocab_size * scfg.hidden_size + scfg.num_hidden_layers * per_layer
        need = 2 * 16 * params
        free, _ = torch.cuda.mem_get_info()
        return max(1, min(cap, int(0.8 * free // need)))

    def _new(self, mapping: Mapping) -> Evaluation:
        return Evaluation(list(mapping.genes), mapping.num_teacher_layers, self.spec_key,
                          worker=f"{socket.gethostname()}:{os.getpid()}")

    @staticmethod
    def _fail(ev: Evaluation, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        ev.status = f"failed: {type(exc).__name__}: {first}"[:500]
        ev.fitness = None
        ev.error = "".join(traceback.format_exception(exc, limit=8))

    def _finetune(self, ev: Evaluation, student, progress: bool) -> None:
        """The second half of an evaluation: fine-tune on each proxy task and aggregate."""
        from layersearch.finetune import finetune_all
        from layersearch.student import finish_student

        t0 = time.perf_counter()
        # WID's compactor model becomes an ordinary smaller model before fine-tuning.
        encoder = finish_student(student).base_model.to(self.device)
        results = finetune_all(encoder, self.tokenizer, self.cfg.tasks, self.datasets,
                               self.device, progress)
        ev.timings["finetune_s"] = time.perf_counter() - t0
        for r in results:
            ev.curves[f"finetune/{r.task}/seed{r.seed}"] = list(enumerate(r.loss_curve, 1))
        agg = aggregate(self.cfg.tasks.names, self.cfg.tasks.weights, results)
        ev.fitness, ev.fitness_std = agg["fitness"], agg["fitness_std"]
        ev.scores, ev.scores_std, ev.metrics = agg["scores"], agg["scores_std"], agg["metrics"]

    def evaluate(self, mapping: Mapping, progress: bool = False) -> Evaluation:
        """Proxy-distil a fresh student along ``mapping`` and fine-tune it on each task."""
        from layersearch.distill import train
        from layersearch.student import make_student

        ev = self._new(mapping)
        began = time.perf_counter()
        try:
            student, loss, _ = make_student(self.cfg, self.teacher, mapping, self.slice.input_ids,
                                            self.pad)
            result = train(student, self.teacher, loss, self.slice.input_ids,
                           self.cfg.proxy.train, pad_token_id=self.pad, progress=progress)
            ev.curves = {f"distill/{k}": v for k, v in result.curves.items() if k != "lr"}
            ev.timings["distill_s"] = result.seconds
            self._finetune(ev, student, progress)
        except Exception as exc:  # a bad candidate is a result, not a crash
            self._fail(ev, exc)
        ev.timings["total_s"] = time.perf_counter() - began
        return ev

    def evaluate_pack(self, mappings: list[Mapping], progress: bool = False) -> list[Evaluation]:
        """Evaluate several mappings with one teacher forward per proxy batch.

        Same results as ``evaluate`` one by one (see packed.py); the proxy
        distillation's wall time is shared equally among the pack.
        """
        from layersearch.packed import train_packed
        from layersearch.student import make_student

        began = time.perf_counter()
        evs = [self._new(m) for m in mappings]
        built = []  # (evaluation, student, loss) for candidates that could be built
        for ev, mapping in zip(evs, mappings, strict=True):
            try:
                student, loss, _ = make_student(self.cfg, self.teacher, mapping,
                                                self.slice.input_ids, self.pad)
                built.append((ev, student, loss))
            except Exception as exc:
                self._fail(ev, exc)
        if built:
            outcomes = train_packed([b[1] for b in built], self.teacher, [b[2] for b in built],
                                    self.slice.input_ids, self.cfg.proxy.train, self.pad)
            for (ev, student, _), out in zip(built, outcomes, strict=True):
                if isinstance(out, Exception):
                    self._fail(ev, out)
                    continue
                ev.curves = {f"distill/{k}": v for k, v in out.curves.items() if k != "lr"}
                ev.timings["distill_s"] = out.seconds
                try:
                    self._finetune(ev, student, progress)
                except Exception as exc:
                    self._fail(ev, exc)
        share = (time.perf_counter() - began) / len(mappings)
        for ev in evs:
            # A member's own time: its share of the packed distillation plus its fine-tuning.
            parts = [ev.timings[k] for k in ("distill_s", "finetune_s") if k in ev.timings]
            ev.timings["total_s"] = sum(parts) if ev.ok else share
        return evs
