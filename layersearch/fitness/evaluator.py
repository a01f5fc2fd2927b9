"""What a mapping is worth: proxy distillations, then fine-tunes on the proxy tasks.

An ``Evaluator`` loads the teacher, tokenizer, proxy slices and task data once
and evaluates any number of mappings against them. For each proxy slice seed
it distils one student (the slice seed also offsets the distillation seed),
then fine-tunes it once per fine-tune seed on every task: each (slice,
fine-tune seed) pair is one unit of evidence. Given an earlier record of the
same mapping and spec, only its missing units are computed.

An evaluation never raises for a bad candidate: a diverging or crashing one
comes back with status ``failed: <why>`` and no fitness, so a search keeps going.
"""

from __future__ import annotations

import copy
import functools
import os
import socket
import time
import traceback

import numpy as np
import torch

from layersearch.config import Config
from layersearch.distill.packed import split_on_oom
from layersearch.fitness.aggregate import summarize
from layersearch.fitness.record import Evaluation, pack_labels, unit_key
from layersearch.fitness.spec import init_spec_key, spec_key, units_of
from layersearch.mapping import Mapping
from layersearch.readout import make_readout
from layersearch.readout.finetune import TaskEncodings


def record_unit(ev: Evaluation, slice_seed: int, distill_s: float, r, curves: bool = True) -> None:
    """One task result (``finetune.TaskResult``) of one fine-tune seed into its unit of ``ev``."""
    unit = ev.units.setdefault(unit_key(slice_seed, r.seed),
                               {"slice_seed": slice_seed, "finetune_seed": r.seed,
                                "distill_s": distill_s, "tasks": {}})
    preds = np.asarray(r.predictions)
    evidence = ({"values": [float(v) for v in preds]} if np.issubdtype(preds.dtype, np.floating)
                else {"predictions": pack_labels(preds)})
    unit["tasks"][r.task] = {**evidence, "metrics": r.metrics, "seconds": r.seconds, "steps": r.steps}
    labels = pack_labels(r.labels)
    if ev.dev_labels.setdefault(r.task, labels) != labels:
        raise RuntimeError(f"{r.task}: dev labels changed between fine-tunes")
    ev.majority[r.task] = r.majority_baseline
    if curves:
        ev.curves[f"finetune/{r.task}/seed{r.seed}"] = list(enumerate(r.loss_curve, 1))


class Evaluator:
    """Teacher, tokenizer, proxy slices and task data, loaded once; evaluates mappings."""

    def __init__(self, cfg: Config, device: str | None = None):
        from layersearch.data.tasks import load_task
        from layersearch.models import load_teacher_for, load_tokenizer

        self.cfg = cfg
        from layersearch.fitness.spec import evaluation_device

        self.device = device or evaluation_device(cfg)  # one policy for every command (spec.py)
        if self.device == "cuda" and not torch.cuda.is_available():
            from layersearch.errors import UserError

            raise UserError(f"ray.num_gpus is {cfg.ray.num_gpus} but this process sees no GPU; set "
                            "ray.num_gpus: auto (or 0) to evaluate on the CPU")
        self.spec_key = spec_key(cfg, torch.device(self.device).type)
        self.init_spec_key = init_spec_key(cfg, torch.device(self.device).type)
        self.teacher = load_teacher_for(cfg, attentions=False)
        self.tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
        self.pad = self.tokenizer.pad_token_id or 0
        self._slices: dict[int, torch.Tensor] = {}
        self._targets: dict[int, object] = {}
        kind = torch.device(self.device).type
        # Resolved once: the spec key above says the same (fitness.spec.proxy_spec).
        from layersearch.data.targets import teacher_cache_on

        self.teacher_cache = teacher_cache_on(cfg, kind, self.teacher.config)
        self.slice(cfg.proxy.slice_seeds[0])  # fail at start-up, not in the first evaluation
        self.targets(cfg.proxy.slice_seeds[0])
        # The agreement readout reads no task data: only held-out corpus blocks.
        self.datasets = ({} if cfg.tasks.readout == "agreement" else
                         {n: load_task(n, cfg.tasks.source) for n in cfg.tasks.names})
        # Tokenised once here, not per candidate and seed (it was ~16 s of each quickstart evaluation).
        self.encoded = TaskEncodings(self.tokenizer, self.datasets, cfg.tasks.finetune)
        self.readout = make_readout(cfg, self.tokenizer, self.datasets, self.encoded, self.device, self.teacher)
        self.num_teacher_layers = self.teacher.config.num_hidden_layers

    def slice(self, seed: int) -> torch.Tensor:
        """The proxy slice of one slice seed, loaded once."""
        from layersearch.data.slices import get_slice

        if seed not in self._slices:
            # The agreement readout tests on the corpus's last blocks: no slice may train on them.
            reserve = self.cfg.tasks.agreement.heldout_blocks if self.cfg.tasks.readout == "agreement" else 0
            self._slices[seed] = get_slice(self.cfg.corpus, self.tokenizer, self.cfg.proxy.slice_blocks,
                                           seed, reserve).input_ids
        return self._slices[seed]

    def targets(self, seed: int):
        """The cached teacher targets of one slice (``data.targets``), or None with the cache off."""
        if not self.teacher_cache:
            return None
        if seed not in self._targets:
            from layersearch.data.targets import slice_targets

            precision = self.slice_config(seed).proxy.train.precision  # resolved, as training runs it
            self._targets[seed] = slice_targets(self.cfg, self.teacher, self.slice(seed),
                                                torch.device(self.device).type, precision)
        return self._targets[seed]

    def slice_config(self, seed: int) -> Config:
        """The config one slice's student is built and distilled with: its own random stream."""
        from layersearch.init import proxy_init_config
        from layersearch.precision import resolve_precision

        cfg = copy.deepcopy(self.cfg)
        cfg.proxy.train.seed = self.cfg.proxy.train.seed + seed
        # "auto" as the spec key resolved it, which depends on the readout (precision.py).
        cfg.proxy.train.precision = resolve_precision(cfg.proxy.train.precision, torch.device(self.device).type,
                                                      cfg.tasks.readout)
        cfg.student.init = proxy_init_config(self.cfg)
        return cfg

    def suggest_pack_size(self, cap: int = 16) -> int:
        """How many students to pack: from free GPU memory, or 4 on a CPU (see ``pack_budget``)."""
        if self.device != "cuda":
            return 4
        from layersearch.fitness.pack_budget import pack_size

        free, _ = torch.cuda.mem_get_info()
        return pack_size(free, self.teacher.config, self.cfg, cap, self.packed_finetune)

    @property
    def packed_finetune(self) -> bool:
        """Whether a pack's students are fine-tuned together: on a GPU, unless the config says."""
        if self.readout.name != "finetune":  # the other readouts train nothing
            return False
        packed = self.cfg.tasks.finetune.packed
        return self.device == "cuda" if packed == "auto" else bool(packed)

    # --- records --------------------------------------------------------------
    def _wanted(self, units: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
        """The units to hold: all of the config's, or the subset a racing rung asks for."""
        every = units_of(self.cfg)
        if units is None:
            return every
        unknown = [u for u in units if tuple(u) not in every]
        if unknown:
            raise ValueError(f"units {unknown} are not among this config's slice x fine-tune seeds")
        return [tuple(u) for u in units]

    def _new(self, mapping: Mapping, prior: Evaluation | None, units=None, spec: str | None = None) -> Evaluation:
        """A record for ``mapping`` that starts from ``prior``'s units of this spec (or ``spec``)."""
        spec = spec or self.spec_key
        ev = Evaluation(list(mapping.genes), mapping.num_teacher_layers, spec,
                        init=None if mapping.init is None else list(mapping.init),
                        worker=f"{socket.gethostname()}:{os.getpid()}")
        if prior is not None and prior.ok and prior.spec_key == spec:
            wanted = [unit_key(s, f) for s, f in self._wanted(units)]
            ev.units = {u: prior.units[u] for u in wanted if u in prior.units}
            ev.dev_labels, ev.majority = dict(prior.dev_labels), dict(prior.majority)
            ev.curves = dict(prior.curves)
        return ev

    @staticmethod
    def _fail(ev: Evaluation, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        ev.status = f"failed: {type(exc).__name__}: {first}"[:500]
        ev.fitness = None
        ev.error = "".join(traceback.format_exception(exc, limit=8))

    def _todo(self, ev: Evaluation, slice_seed: int, units=None) -> list[int]:
        """Fine-tune seeds of this slice that ``ev`` still lacks (among ``units``, if given)."""
        wanted = self._wanted(units)
        return [f for s, f in wanted if s == slice_seed and unit_key(s, f) not in ev.units]

    def _finetune(self, ev: Evaluation, student, slice_seed: int, seeds: list[int], progress: bool,
                  distill_s: float) -> None:
        """Read the distilled student out (``tasks.readout``) on every task with each seed; one unit
        per seed.

        Each unit records its slice's distillation time, so the cost of any set
        of units can be added up later (benches compare budgets that way).
        """
        from layersearch.student import finish_student

        t0 = time.perf_counter()
        # WID's compactor model becomes an ordinary smaller model before it is read out.
        encoder = finish_student(student).base_model.to(self.device)
        results = self.readout.score(encoder, seeds, progress)
        ev.timings["finetune_s"] = ev.timings.get("finetune_s", 0.0) + time.perf_counter() - t0
        for r in results:
            self._record(ev, slice_seed, distill_s, r)

    def _finetune_packed(self, members: list, slice_seed: int) -> None:
        """``_finetune`` for a pack's members together: (evaluation, student, seeds, distill_s) each.

        Per task and seed, the members that lack that unit are fine-tuned as one
        vmapped pack; a member that fails (diverges) fails alone.
        """
        from layersearch.readout.finetune_packed import finetune_pack
        from layersearch.student import finish_student

        encoders = [finish_student(st).base_model.to(self.device) for _, st, _, _ in members]
        for task in self.cfg.tasks.names:
            for seed in sorted({f for _, _, seeds, _ in members for f in seeds}):
                idx = [i for i, (ev, _, seeds, _) in enumerate(members) if ev.ok and seed in seeds]
                if not idx:
                    continue
                t0 = time.perf_counter()
                outcomes = split_on_oom(
                    idx, lambda part, task=task, seed=seed: finetune_pack(
                        [encoders[i] for i in part], self.tokenizer, task, self.encoded,
                        self.cfg.tasks.finetune, seed, self.device))
                share = (time.perf_counter() - t0) / len(idx)
                for i, out in zip(idx, outcomes, strict=True):
                    ev, _, _, distill_s = members[i]
                    ev.timings["finetune_s"] = ev.timings.get("finetune_s", 0.0) + share
                    if isinstance(out, Exception):
                        self._fail(ev, out)
                    else:
                        self._record(ev, slice_seed, distill_s, out)

    def _record(self, ev: Evaluation, slice_seed: int, distill_s: float, r) -> None:
        # Curves of one slice are enough to look at.
        record_unit(ev, slice_seed, distill_s, r, curves=slice_seed == self.cfg.proxy.slice_seeds[0])

    def _distilled(self, ev: Evaluation, result, slice_seed: int) -> None:
        if slice_seed == self.cfg.proxy.slice_seeds[0]:
            ev.curves.update({f"distill/{k}": v for k, v in result.curves.items() if k != "lr"})
        ev.timings["distill_s"] = ev.timings.get("distill_s", 0.0) + result.seconds

    def _finish(self, ev: Evaluation) -> Evaluation:
        if ev.ok:
            try:
                summarize(ev, self.cfg.tasks.scored, self.cfg.tasks.scored_weights)
            except Exception as exc:
                self._fail(ev, exc)
        return ev

    # --- evaluation -------------------------------------------------------------
    def evaluate(self, mapping: Mapping, prior: Evaluation | None = None, progress: bool = False,
                 units: list[tuple[int, int]] | None = None) -> Evaluation:
        """Proxy-distil ``mapping`` on each slice and fine-tune; only units ``prior`` lacks are run.

        ``units`` (slice seed, fine-tune seed) limits the work to a racing rung's units.
        """
        from layersearch.distill import train
        from layersearch.student import make_student

        ev = self._new(mapping, prior, units)
        began, cpu = time.perf_counter(), time.process_time()
        try:
            for s in self.cfg.proxy.slice_seeds:
                seeds = self._todo(ev, s, units)
                if not seeds:
                    continue
                ev.timings["cpu_slices"] = ev.timings.get("cpu_slices", 0) + 1
                cfg, data = self.slice_config(s), self.slice(s)
                student, loss, _ = make_student(cfg, self.teacher, mapping, data, self.pad)
                result = train(student, self.teacher, loss, data, cfg.proxy.train, pad_token_id=self.pad,
                               progress=progress, teacher_targets=self.targets(s), device=self.device)
                self._distilled(ev, result, s)
                self._finetune(ev, student, s, seeds, progress, result.seconds)
        except Exception as exc:  # a bad candidate is a result, not a crash
            self._fail(ev, exc)
        ev.timings["total_s"] = time.perf_counter() - began
        # CPU seconds of this process (every intra-op thread), a cost a shared machine does not
        # inflate, and the slices they paid for (a record resumed from a prior holds more).
        ev.timings["cpu_s"] = time.process_time() - cpu
        return self._finish(ev)

    def init_of(self, mapping: Mapping) -> Mapping:
        """The name of ``mapping``'s untouched proxy init (shared by every mapping where it is fixed)."""
        from layersearch.init import init_identity, proxy_init_config

        return init_identity(proxy_init_config(self.cfg), mapping)

    def evaluate_init(self, mapping: Mapping, prior: Evaluation | None = None, progress: bool = False,
                      units: list[tuple[int, int]] | None = None) -> Evaluation:
        """The init baseline: ``mapping``'s proxy student before distillation, fine-tuned and scored
        on the same units as ``evaluate`` (recorded under ``init_of(mapping)`` and the init spec key)."""
        from layersearch.student import make_student

        ev = self._new(self.init_of(mapping), prior, units, spec=self.init_spec_key)
        began = time.perf_counter()
        try:
            for s in self.cfg.proxy.slice_seeds:
                seeds = self._todo(ev, s, units)
                if seeds:
                    # Built exactly as ``evaluate`` builds it, then not trained.
                    student, _, _ = make_student(self.slice_config(s), self.teacher, mapping, self.slice(s),
                                                 self.pad)
                    self._finetune(ev, student, s, seeds, progress, 0.0)
        except Exception as exc:
            self._fail(ev, exc)
        ev.timings["total_s"] = time.perf_counter() - began
        return self._finish(ev)

    def evaluate_pack(self, mappings: list[Mapping], priors: list[Evaluation | None] | None = None,
                      progress: bool = False, units: list[tuple[int, int]] | None = None) -> list[Evaluation]:
        """Evaluate several mappings with one teacher forward per proxy batch.

        Same results as ``evaluate`` one by one (see packed.py); each slice's
        distillation wall time is shared equally among the members that needed it.
        """
        began, cpu = time.perf_counter(), time.process_time()
        priors = priors or [None] * len(mappings)
        evs = [self._new(m, p, units) for m, p in zip(mappings, priors, strict=True)]
        for s in self.cfg.proxy.slice_seeds:
            members = [(ev, m) for ev, m in zip(evs, mappings, strict=True) if ev.ok and self._todo(ev, s, units)]
            if not members:
                continue
            for ev, _ in members:
                ev.timings["cpu_slices"] = ev.timings.get("cpu_slices", 0) + 1
            cfg, data = self.slice_config(s), self.slice(s)
            # Out of memory halves the pack and retries with fresh students, down to one student
            # (which then fails alone); another error is retried member by member.
            outcomes = split_on_oom(members, functools.partial(self._distil_pack, cfg, data, self.targets(s)))
            distilled = []
            for (ev, _), out in zip(members, outcomes, strict=True):
                if isinstance(out, Exception):
                    self._fail(ev, out)
                    continue
                student, result = out
                self._distilled(ev, result, s)
                distilled.append((ev, student, self._todo(ev, s, units), result.seconds))
            if self.packed_finetune:
                self._finetune_packed(distilled, s)
                continue
            for ev, student, seeds, distill_s in distilled:
                try:
                    self._finetune(ev, student, s, seeds, progress, distill_s)
                except Exception as exc:
                    self._fail(ev, exc)
        share = (time.perf_counter() - began) / len(mappings)
        cpu_share = (time.process_time() - cpu) / len(mappings)  # the pack's CPU, shared equally
        for ev in evs:
            ev.timings["cpu_s"] = cpu_share
            # A member's own time: its share of the packed distillation plus its fine-tuning.
            parts = [ev.timings[k] for k in ("distill_s", "finetune_s") if k in ev.timings]
            ev.timings["total_s"] = sum(parts) if ev.ok else share
        return [self._finish(ev) for ev in evs]

    def _distil_pack(self, cfg: Config, data: torch.Tensor, targets, members: list) -> list:
        """(student, TrainResult) or the exception, for each (evaluation, mapping) of ``members``.

        Students are built here, so a retry of part of the pack starts from fresh ones.
        """
        from layersearch.distill.packed import train_packed
        from layersearch.student import make_student

        out: list = []
        for _, mapping in members:
            try:
                student, loss, _ = make_student(cfg, self.teacher, mapping, data, self.pad)
                out.append((student, loss))
            except Exception as exc:  # a mapping that cannot be built fails alone, before training
                out.append(exc)
        live = [i for i, o in enumerate(out) if not isinstance(o, Exception)]
        if live:
            results = train_packed([out[i][0] for i in live], self.teacher, [out[i][1] for i in live], data,
                                   cfg.proxy.train, self.pad, teacher_targets=targets, device=self.device)
            for i, result in zip(live, results, strict=True):
                out[i] = result if isinstance(result, Exception) else (out[i][0], result)
        return out
