"""The priority of the Ray workers a local ``ray.init`` starts: ``ray.worker_niceness``.

Ray's raylet renices every worker it spawns by ``RAY_worker_niceness`` (15 by
default, read from the raylet's environment when it starts). At 15 a search's
evaluators get a sliver of a core beside any other job on the machine (7% beside
a ``compare``, with no progress line for 19 minutes), so a Ray this program starts
gets the configured value instead: 0, the user's own priority, by default.
Connecting to a running cluster (``ray.address``, ``RAY_ADDRESS``) changes nothing:
its raylets were started with their own environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from layersearch.config import RayConfig

NICENESS_ENV = "RAY_worker_niceness"  # ray._private.ray_constants.RAY_WORKER_NICENESS


def starts_local_ray(cfg: RayConfig) -> bool:
    """``ray.init`` here starts a new local Ray (no address in the config or RAY_ADDRESS)."""
    return not (cfg.address or os.environ.get("RAY_ADDRESS"))


@contextmanager
def local_worker_priority(cfg: RayConfig) -> Iterator[None]:
    """Around a ``ray.init``: where it starts a local Ray, its raylet sees ``worker_niceness``.

    The variable is put back afterwards; the raylet, started inside, keeps its copy.
    """
    if not starts_local_ray(cfg):
        yield
        return
    before = os.environ.get(NICENESS_ENV)
    os.environ[NICENESS_ENV] = str(cfg.worker_niceness)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NICENESS_ENV, None)
        else:
            os.environ[NICENESS_ENV] = before
