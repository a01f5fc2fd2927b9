"""Dispatch evaluations to a pool of Ray actors and stream results back.

Each actor builds one evaluator (teacher, tokenized slice and task data loaded
once) and then evaluates mapping after mapping. The same code runs on a local
Ray started here and on a cluster named by ``ray.address`` / ``RAY_ADDRESS``.
An actor that dies (node lost, out of memory, preemption) is replaced and its
evaluation re-queued, up to ``ray.max_retries`` times per evaluation; after
that the evaluation is reported as failed, so a search always finishes with
every candidate accounted for.

Work goes only to actors that have started: a replacement may wait for
resources (a lost node's GPU) indefinitely, and the evaluations meanwhile run
on the actors that are left. Only when no actor is left does the pool wait
for capacity to come back, as a cluster's autoscaler or a restarted node gives it.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from layersearch.config import Config, RayConfig
from layersearch.errors import UserError
from layersearch.fitness import Evaluation
from layersearch.mapping import Mapping


class EvaluatorStartError(UserError):
    pass


def default_factory(cfg: Config):
    from layersearch.fitness import Evaluator

    return Evaluator(cfg)


class EvaluatorActor:
    """Wrapped by ``ray.remote`` in the pool; plain class so tests can build it directly."""

    def __init__(self, cfg: Config, factory: Callable[[Config], object], spec: str | None = None):
        import ray
        import torch

        # One intra-op thread per CPU Ray granted: more threads than cores only contend.
        torch.set_num_threads(max(1, int(cfg.ray.num_cpus)))
        self.evaluator = factory(cfg)
        mine = getattr(self.evaluator, "spec_key", None)
        if spec and mine and mine != spec:
            # Its results would be cached and compared as if they were the driver's.
            raise RuntimeError(
                f"this worker's proxy spec {mine} differs from the driver's {spec}: torch and transformers "
                "versions, the teacher, and the task and corpus files must match on every node")
        # Outside Ray (tests, a local pool) asking for the runtime context would start a Ray
        # instance as a side effect, so ask only where one is running.
        node = ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else "local"
        self.where = f"{node}/{socket.gethostname()}:{os.getpid()}"

    def evaluate(self, genes: list[int], num_teacher_layers: int, prior: dict | None = None,
                 init: list[int] | None = None, units: list | None = None) -> dict:
        """One candidate; ``prior`` is its cached record, whose units need not be run again;
        ``units`` limits the work to a racing rung's (slice seed, fine-tune seed) pairs."""
        mapping = Mapping(tuple(genes), num_teacher_layers, None if init is None else tuple(init))
        kwargs = {} if units is None else {"units": [tuple(u) for u in units]}
        if prior is not None:
            kwargs["prior"] = Evaluation.from_dict(prior)
        ev = self.evaluator.evaluate(mapping, **kwargs)
        ev.worker = self.where
        return ev.to_dict()  # plain data across the process boundary

    def evaluate_pack(self, genes: list[list[int]], num_teacher_layers: int,
                      priors: list[dict | None] | None = None, inits: list | None = None,
                      units: list | None = None) -> list[dict]:
        """Several candidates sharing one teacher pass per batch (see packed.py)."""
        inits = inits or [None] * len(genes)
        mappings = [Mapping(tuple(g), num_teacher_layers, None if i is None else tuple(i))
                    for g, i in zip(genes, inits, strict=True)]
        records = [None if p is None else Evaluation.from_dict(p) for p in (priors or [None] * len(genes))]
        kwargs = {} if units is None else {"units": [tuple(u) for u in units]}
        if hasattr(self.evaluator, "evaluate_pack"):
            evs = self.evaluator.evaluate_pack(mappings, records, **kwargs)
        else:  # an evaluator without packing evaluates them in turn
            evs = [self.evaluator.evaluate(m, **kwargs) if r is None else self.evaluator.evaluate(m, prior=r, **kwargs)
                   for m, r in zip(mappings, records, strict=True)]
        for ev in evs:
            ev.worker = self.where
        return [ev.to_dict() for ev in evs]

    def evaluate_init(self, genes: list[int], num_teacher_layers: int, prior: dict | None = None,
                      init: list[int] | None = None) -> dict:
        """The init baseline of one mapping: its proxy student built, not distilled, then scored."""
        mapping = Mapping(tuple(genes), num_teacher_layers, None if init is None else tuple(init))
        ev = self.evaluator.evaluate_init(mapping, None if prior is None else Evaluation.from_dict(prior))
        ev.worker = self.where
        return ev.to_dict()

    def suggest_pack_size(self) -> int:
        suggest = getattr(self.evaluator, "suggest_pack_size", None)
        return int(suggest()) if suggest else 1

    def where_am_i(self) -> str:
        return self.where


def ensure_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start a local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    from layersearch.ray_priority import local_worker_priority

    address = cfg.address  # None: ray.init reads RAY_ADDRESS itself, else starts locally
    with local_worker_priority(cfg):  # a local Ray's evaluators at ray.worker_niceness
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="WARNING")


def _reason(exc: BaseException) -> str:
    """One line on why: the remote exception where the evaluator or its constructor raised."""
    cause = getattr(exc, "cause", None)  # RayTaskError: the evaluator's own exception
    if isinstance(cause, BaseException):
        exc = cause
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    if getattr(exc, "actor_init_failed", False) and lines:
        return lines[-1][:300]  # the message ends with the constructor's traceback
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


@dataclass
class _Job:
    mapping: Mapping
    prior: dict | None = None  # the cached record to extend, as plain data
    attempts: int = 0

    def failed(self, why: str, error: str = "") -> Evaluation:
        init = None if self.mapping.init is None else list(self.mapping.init)
        return Evaluation(list(self.mapping.genes), self.mapping.num_teacher_layers, "",
                          status=f"failed: {why}"[:500], error=error, init=init)


class EvaluatorPool:
    def __init__(self, cfg: Config, factory: Callable[[Config], object] | None = None,
                 resources: dict | None = None, spec: str | None = None):
        import ray

        ensure_ray(cfg.ray)
        self.cfg = cfg
        self.factory = factory or default_factory
        self.spec = spec  # the driver's spec key, which every evaluator must share
        # GPUs on a cluster; tests model them as a custom resource.
        from layersearch.fitness.spec import evaluator_gpus

        options = {"num_cpus": cfg.ray.num_cpus, "num_gpus": evaluator_gpus(cfg), "max_restarts": 0}
        if resources:
            options["resources"] = resources
        self._actor_cls = ray.remote(EvaluatorActor).options(**options)
        self.actors: set = set()  # every actor alive or being created, for shutdown
        self.ready: list = []  # started and idle
        self.starting: dict = {}  # readiness probe -> actor being created
        self.replaced = 0
        self.start_failures = 0  # in a row; reset by any actor that starts
        self._auto_pack: int | None = None
        for _ in range(cfg.ray.num_evaluators):
            self._start_actor()

    def _start_actor(self) -> None:
        actor = self._actor_cls.remote(self.cfg, self.factory, self.spec)
        self.actors.add(actor)
        self.starting[actor.where_am_i.remote()] = actor

    def _replace(self, actor) -> None:
        import ray

        # Ray may only think it unreachable (ActorUnavailableError): kill it so a
        # live one cannot keep holding its GPU while the replacement waits for one.
        ray.kill(actor, no_restart=True)
        self.actors.discard(actor)
        self.replaced += 1
        self._start_actor()

    def _started(self, probe) -> None:
        """A readiness probe came back: the actor joins the pool, or is replaced."""
        import ray
        from ray.exceptions import RayError

        actor = self.starting.pop(probe)
        try:
            ray.get(probe)
        except RayError as exc:  # the constructor raised, or the node went before it ran
            self.start_failures += 1
            limit = (self.cfg.ray.max_retries + 1) * self.cfg.ray.num_evaluators
            if self.start_failures >= limit:
                self.shutdown()
                raise EvaluatorStartError(
                    f"no evaluator could start ({self.start_failures} tries in a row); "
                    f"the last error: {_reason(exc)}") from None
            self._replace(actor)
            return
        self.start_failures = 0
        self.ready.append(actor)

    def run(self, mappings: list[Mapping], on_result: Callable[[Evaluation], None],
            on_event: Callable[[str, Mapping], None] | None = None,
            priors: dict[str, Evaluation] | None = None,
            units: list[tuple[int, int]] | None = None, heartbeat: float | None = None) -> list[Evaluation]:
        """Evaluate every mapping; ``on_result`` is called as each one finishes.

        ``priors`` (by mapping key) are cached records whose units are not run again;
        ``units`` limits every evaluation to these (slice seed, fine-tune seed) pairs;
        every ``heartbeat`` seconds in which nothing finishes, ``on_event("waiting", None)``.
        """
        import ray
        from ray.exceptions import RayError, RayTaskError

        units = None if units is None else [list(u) for u in units]
        priors = priors or {}
        queue = deque(_Job(m, priors[m.key].to_dict() if m.key in priors else None) for m in mappings)
        in_flight: dict = {}  # object ref -> (actor, job)
        results: list[Evaluation] = []

        pack = self._pack_size()

        def dispatch():
            while queue and self.ready:
                # Spread a short queue over every idle actor rather than packing it onto one.
                size = max(1, min(pack, -(-len(queue) // len(self.ready))))
                actor = self.ready.pop()
                jobs = [queue.popleft() for _ in range(min(size, len(queue)))]
                n_teacher = jobs[0].mapping.num_teacher_layers
                inits = [None if j.mapping.init is None else list(j.mapping.init) for j in jobs]
                if len(jobs) == 1:
                    ref = actor.evaluate.remote(list(jobs[0].mapping.genes), n_teacher, jobs[0].prior, inits[0],
                                                units)
                else:
                    ref = actor.evaluate_pack.remote([list(j.mapping.genes) for j in jobs], n_teacher,
                                                     [j.prior for j in jobs], inits, units)
                in_flight[ref] = (actor, jobs)
                for job in jobs:
                    job.attempts += 1
                    if on_event:
                        on_event("started", job.mapping)

        while queue or in_flight:
            dispatch()
            done, rest = ray.wait([*in_flight, *self.starting], num_returns=1, timeout=heartbeat)
            if not done:  # nothing finished in a heartbeat: the caller may see a job stall
                if on_event:
                    on_event("waiting", None)
                continue
            if rest:  # and whatever else has finished by now, to restart every freed actor at once
                done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            finished = []
            for ref in done:
                if ref in self.starting:
                    self._started(ref)
                    continue
                actor, jobs = in_flight.pop(ref)
                try:
                    out = ray.get(ref)
                    evs = [Evaluation.from_dict(d) for d in (out if len(jobs) > 1 else [out])]
                    self.ready.append(actor)
                    for job, ev in zip(jobs, evs, strict=True):
                        # A transient failure (out of memory even alone, a flaky device) is
                        # tried again like a lost worker's job, so it does not stay a failure.
                        if not ev.ok and not ev.cacheable and job.attempts <= self.cfg.ray.max_retries:
                            queue.append(job)
                            if on_event:
                                on_event("retry", job.mapping)
                        else:
                            finished.append(ev)
                except RayTaskError as exc:  # the evaluator itself raised: a result, not a lost worker
                    self.ready.append(actor)
                    finished.extend(job.failed(_reason(exc), error=str(exc)) for job in jobs)
                except RayError as exc:  # the worker is gone (node lost, OOM-killed, unreachable)
                    self._replace(actor)
                    for job in reversed(jobs):
                        if job.attempts <= self.cfg.ray.max_retries:
                            queue.appendleft(job)
                            if on_event:
                                on_event("retry", job.mapping)
                        else:
                            finished.append(
                                job.failed(f"worker lost {job.attempts} times ({type(exc).__name__})"))
            # Freed actors start their next evaluations before these are recorded: the
            # driver writes each one to MLflow, which would otherwise leave them idle.
            dispatch()
            for ev in finished:
                on_result(ev)
                results.append(ev)
        return results

    def evaluate_init(self, mapping: Mapping, prior: Evaluation | None = None) -> Evaluation:
        """``mapping``'s init baseline on one started evaluator (a single job, so no queue)."""
        import ray

        self.wait_started()
        if not self.ready:
            raise EvaluatorStartError("no evaluator is running to score the init baseline")
        actor = self.ready[0]
        ref = actor.evaluate_init.remote(list(mapping.genes), mapping.num_teacher_layers,
                                         None if prior is None else prior.to_dict(),
                                         None if mapping.init is None else list(mapping.init))
        return Evaluation.from_dict(ray.get(ref))

    def wait_started(self, timeout: float | None = None) -> int:
        """Block until every actor being created has started or failed (or ``timeout`` s pass).

        Returns how many actors are ready. ``run`` never needs this (it uses actors as they
        start); a caller that wants work spread over the whole pool from the first job does.
        """
        import time

        import ray

        end = None if timeout is None else time.monotonic() + timeout
        while self.starting:
            left = None if end is None else max(0.0, end - time.monotonic())
            done, _ = ray.wait(list(self.starting), num_returns=1, timeout=left)
            if not done:
                break
            self._started(done[0])
        return len(self.ready)

    def _pack_size(self) -> int:
        """ray.pack_size, or for "auto" what the first started evaluator suggests."""
        import ray

        size = self.cfg.ray.pack_size
        if size != "auto":
            return int(size)
        if self._auto_pack is None:
            while not self.ready and self.starting:
                done, _ = ray.wait(list(self.starting), num_returns=1)
                self._started(done[0])
            self._auto_pack = ray.get(self.ready[0].suggest_pack_size.remote()) if self.ready else 1
        return self._auto_pack

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors.clear()
        self.ready.clear()
        self.starting.clear()
