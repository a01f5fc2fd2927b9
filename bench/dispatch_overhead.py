"""Dispatch overhead of the evaluator pool on a local multi-node Ray cluster.

    python bench/dispatch_overhead.py [--evals 16] [--delay 1.0] [--nodes 2] [--slots 2]

Builds a cluster here with ``ray.cluster_utils.Cluster``: a head and
``--nodes`` worker nodes, each with ``--slots`` of a custom ``gpu_slot``
resource standing in for GPUs (and as many logical CPUs: the dummy work
sleeps, so they may exceed this machine's cores). Each evaluation is the
test double from tests/fitness_double.py sleeping ``--delay`` seconds, so
anything above that is dispatch: Ray calls, result transfer, the pool's
bookkeeping. Prints, for 1, 2 and 4 evaluators, the wall time of ``--evals``
evaluations on warm actors, the overhead per evaluation, and the speedup over
one evaluator against the ideal (the number of evaluators). "recorded" adds
what the search driver does as each result arrives, one MLflow child run (a
local SQLite store) per evaluation, which runs between dispatches.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import ray
import ray.cloudpickle
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import fitness_double  # noqa: E402

from layersearch.config import load_config  # noqa: E402
from layersearch.mapping import Mapping  # noqa: E402
from layersearch.search.pool import EvaluatorPool  # noqa: E402
from layersearch.tracking import Tracker, log_evaluation  # noqa: E402

ray.cloudpickle.register_pickle_by_value(fitness_double)  # the workers cannot import tests/
SHARED = ROOT.parent / "shared" / "data"
SLOT = {"gpu_slot": 1}


def mappings(count: int, offset: int = 0) -> list[Mapping]:
    genes = itertools.islice(itertools.product(range(1, 7), repeat=3), offset, offset + count)
    return [Mapping(g, 6) for g in genes]


def timed(evaluators: int, args, tracking_uri: str | None) -> float:
    """Seconds for args.evals evaluations on a pool of warm actors."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        f"corpus.paths=[{SHARED / 'corpus' / 'wikitext103'}]", f"tasks.source={SHARED / 'glue'}",
        f"ray.num_evaluators={evaluators}", "ray.num_cpus=1", "tasks.readout=finetune", "proxy.slice_seeds=[0]",
        "search.racing=null",
        f"tracking.uri={tracking_uri or 'sqlite:///unused.db'}", "tracking.experiment=dispatch-bench"])
    pool = EvaluatorPool(cfg, fitness_double.factory(delay=args.delay), SLOT)
    try:
        # Warm-up, untimed: every actor starts and takes one evaluation.
        while pool.starting:
            pool._started(ray.wait(list(pool.starting), num_returns=1)[0][0])
        pool.run(mappings(evaluators, offset=100), lambda ev: None)
        on_result = lambda ev: None  # noqa: E731
        if tracking_uri:
            tracker = Tracker(cfg.tracking)
            parent = tracker.start("dispatch bench")

            def on_result(ev):
                run_id = tracker.start(f"eval {ev.mapping}", parent_id=parent)
                log_evaluation(tracker, run_id, ev)
                tracker.end(run_id)

        began = time.perf_counter()
        results = pool.run(mappings(args.evals), on_result)
        seconds = time.perf_counter() - began
        assert len(results) == args.evals and all(r.ok for r in results)
        return seconds
    finally:
        pool.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", type=int, default=16)
    ap.add_argument("--delay", type=float, default=1.0, help="seconds per dummy evaluation")
    ap.add_argument("--nodes", type=int, default=2, help="worker nodes")
    ap.add_argument("--slots", type=int, default=2, help="gpu_slot resources per worker node")
    args = ap.parse_args()
    counts = [n for n in (1, 2, 4) if n <= args.nodes * args.slots]

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=args.slots, resources={"gpu_slot": args.slots})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        with tempfile.TemporaryDirectory() as tmp:
            rows = []
            for mode, uri in (("pool", None), ("recorded", f"sqlite:///{tmp}/mlflow.db")):
                for n in counts:
                    rows.append((mode, n, timed(n, args, uri)))
    finally:
        ray.shutdown()
        cluster.shutdown()

    print(f"{args.evals} evaluations of {args.delay:.2f} s; {args.nodes} worker nodes x {args.slots} "
          f"gpu_slot; overhead = wall x evaluators / evaluations - delay")
    print(f"{'mode':9} {'evaluators':>10} {'wall s':>8} {'overhead ms':>12} {'speedup':>8} "
          f"{'ideal':>6} {'ratio':>6}")
    for mode, n, seconds in rows:
        base = next(s for m, k, s in rows if m == mode and k == 1)
        overhead = (seconds * n / args.evals - args.delay) * 1000
        speedup = base / seconds
        print(f"{mode:9} {n:>10} {seconds:>8.2f} {overhead:>12.1f} {speedup:>8.2f} {n:>6} {speedup / n:>6.2f}")


if __name__ == "__main__":
    main()
