"""Dispatch evaluations to a pool of Ray actors and stream results back.

Each actor builds one evaluator (teacher, tokenized slice and task data loaded
once) and then evaluates mapping after mapping. The same code runs on a local
Ray started here and on a cluster named by ``ray.address`` / ``RAY_ADDRESS``.
An actor that dies (node lost, out of memory, preemption) is replaced and its
evaluation re-queued, up to ``ray.max_retries`` times per evaluation; after
that the evaluation is reported as failed, so a search always finishes with
every candidate accounted for.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from layersearch.config import Config, RayConfig
from layersearch.fitness import Evaluation
from layersearch.mapping import Mapping


def default_factory(cfg: Config):
    from layersearch.fitness import Evaluator

    return Evaluator(cfg)


class EvaluatorActor:
    """Wrapped by ``ray.remote`` in the pool; plain class so tests can build it directly."""

    def __init__(self, cfg: Config, factory: Callable[[Config], object]):
        import ray

        self.evaluator = factory(cfg)
        try:
            node = ray.get_runtime_context().get_node_id()[:8]
        except Exception:  # outside Ray
            node = "local"
        self.where = f"{node}/{socket.gethostname()}:{os.getpid()}"

    def evaluate(self, genes: list[int], num_teacher_layers: int) -> dict:
        ev = self.evaluator.evaluate(Mapping(tuple(genes), num_teacher_layers))
        ev.worker = self.where
        return ev.to_dict()  # plain data across the process boundary

    def where_am_i(self) -> str:
        return self.where


def ensure_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start a local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address  # None: ray.init reads RAY_ADDRESS itself, else starts locally
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="WARNING")


@dataclass
class _Job:
    mapping: Mapping
    attempts: int = 0


class EvaluatorPool:
    def __init__(self, cfg: Config, factory: Callable[[Config], object] | None = None,
                 resources: dict | None = None):
        import ray

        ensure_ray(cfg.ray)
        self.cfg = cfg
        self.factory = factory or default_factory
        # GPUs on a cluster; tests model them as a custom resource.
        options = {"num_cpus": cfg.ray.num_cpus, "num_gpus": cfg.ray.num_gpus, "max_restarts": 0}
        if resources:
            options["resources"] = resources
        self._actor_cls = ray.remote(EvaluatorActor).options(**options)
        self.actors = [self._new_actor() for _ in range(cfg.ray.num_evaluators)]
        self.replaced = 0

    def _new_actor(self):
        return self._actor_cls.remote(self.cfg, self.factory)

    def run(self, mappings: list[Mapping], on_result: Callable[[Evaluation], None],
            on_event: Callable[[str, Mapping], None] | None = None) -> list[Evaluation]:
        """Evaluate every mapping; ``on_result`` is called as each one finishes."""
        import ray
        from ray.exceptions import RayActorError

        queue = deque(_Job(m) for m in mappings)
        idle = list(self.actors)
        in_flight: dict = {}  # object ref -> (actor, job)
        results: list[Evaluation] = []

        def submit():
            while queue and idle:
                actor, job = idle.pop(), queue.popleft()
                job.attempts += 1
                ref = actor.evaluate.remote(list(job.mapping.genes), job.mapping.num_teacher_layers)
                in_flight[ref] = (actor, job)
                if on_event:
                    on_event("started", job.mapping)

        submit()
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            actor, job = in_flight.pop(done[0])
            try:
                ev = Evaluation.from_dict(ray.get(done[0]))
                idle.append(actor)
            except RayActorError as exc:
                # The worker is gone: replace it, and retry the evaluation elsewhere.
                replacement = self._new_actor()
                self.actors[self.actors.index(actor)] = replacement
                self.replaced += 1
                idle.append(replacement)
                if job.attempts <= self.cfg.ray.max_retries:
                    queue.appendleft(job)
                    if on_event:
                        on_event("retry", job.mapping)
                    submit()
                    continue
                ev = Evaluation(list(job.mapping.genes), job.mapping.num_teacher_layers, "",
                                status=f"failed: worker lost {job.attempts} times "
                                       f"({type(exc).__name__})")
            on_result(ev)
            results.append(ev)
            submit()
        return results

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
