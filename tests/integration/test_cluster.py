"""A search on a multi-node Ray cluster built on this machine, and one that loses a node.

``ray.cluster_utils.Cluster`` starts a head and worker nodes as separate raylets
here. GPUs are modelled as a custom resource, one ``gpu_slot`` per worker node
and per evaluator, so each evaluator gets a node of its own as it would a GPU,
and the head (where the driver runs) takes none. The fitness double stands in
for the proxy evaluation; the GA, the Ray pool and the MLflow records are the
product's own.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import fitness_double
import pytest
import ray
import ray.cloudpickle
from conftest import quickstart_dict
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from layersearch.config import parse_config
from layersearch.mapping import Mapping
from layersearch.search.driver import SearchDriver
from layersearch.search.pool import EvaluatorPool, EvaluatorStartError

ray.cloudpickle.register_pickle_by_value(fitness_double)
pytestmark = pytest.mark.slow

SLOT = {"gpu_slot": 1}


@pytest.fixture(scope="module")
def cluster():
    """A head without slots and two one-slot worker nodes; the test process is the driver.

    One cluster for the module (starting one is most of a test's time here): ``workers`` is the
    list of live slot nodes, and a test that replaces a lost node updates it."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [c.add_node(num_cpus=1, resources=SLOT) for _ in range(2)]
        c.wait_for_nodes()
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def undisturbed(cluster, shared_data, tmp_path_factory):
    """The seeded search every test here runs, run once on the intact cluster: what a search that
    loses a node must reproduce. Returns (raw, result, markers, the slot nodes it ran on)."""
    _, workers = cluster
    root = tmp_path_factory.mktemp("undisturbed")
    raw = search_raw(quickstart_dict(shared_data, root), root)
    markers = root / "markers"
    driver = SearchDriver(parse_config(raw), fitness_double.factory(str(markers), delay=0.5),
                          num_teacher_layers=6, pool_resources=SLOT)
    return raw, driver.run(), markers, list(workers)


def search_raw(quickstart_raw, tmp_path, **search):
    raw = quickstart_raw
    raw["search"].update({"population": 6, "generations": 3, "seed": 0, "strategy": "ga", "racing": None,
                          "cache_dir": str(tmp_path / "evals"), **search})
    raw["ray"].update(num_evaluators=2, num_cpus=1, max_retries=2)
    return raw


def children(raw, run_id):
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    return client, client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")


def node_of(run) -> str:
    return run.data.tags["layersearch.worker"].split("/")[0]  # "<node id[:8]>/<host>:<pid>"


def check_accounted_for(raw, result, markers):
    """Every genome of every generation has one finished, successful child run; none ran twice."""
    client, kids = children(raw, result.run_id)
    by_key = Counter(k.data.params["mapping"] for k in kids)
    assert max(by_key.values()) == 1, by_key  # one child run per distinct mapping
    assert len(kids) == result.evaluated
    assert all(k.info.status == "FINISHED" and k.data.tags["layersearch.status"] == "ok"
               and "fitness" in k.data.metrics for k in kids)
    checkpoint = client.download_artifacts(result.run_id, "ga_state.json", str(markers.parent))
    populations = json.loads(Path(checkpoint).read_text())["populations"]
    generations = raw["search"]["generations"]
    assert len(populations) == generations
    evaluated = {k.replace(":", "_") for k in by_key}
    assert {f"6_{'-'.join(map(str, g))}" for pop in populations for g in pop} == evaluated
    assert [r["gen"] for r in result.state.logbook] == list(range(generations))
    assert all(r["failed"] == 0 for r in result.state.logbook)
    return kids


def test_evaluations_spread_over_worker_nodes(undisturbed):
    raw, result, markers, workers = undisturbed
    kids = check_accounted_for(raw, result, markers)
    assert len(list(markers.iterdir())) == result.evaluated  # no evaluation ran twice
    nodes = Counter(node_of(k) for k in kids)
    # Both worker nodes did a fair share; the head, with no slot, none.
    assert set(nodes) == {w.node_id[:8] for w in workers}, nodes
    assert min(nodes.values()) >= result.evaluated // 4, nodes


# Abrupt: a lost host, the actor is first "unavailable" (ActorUnavailableError);
# graceful: a drained or preempted node, the actor "died" (ActorDiedError).
@pytest.mark.parametrize("graceful", [False, True], ids=["abrupt", "graceful"])
def test_search_survives_losing_a_worker_node(cluster, undisturbed, quickstart_raw, tmp_path, graceful):
    c, workers = cluster
    raw = search_raw(quickstart_raw, tmp_path)
    markers = tmp_path / "markers"
    lock = threading.Lock()
    recorded: list[str] = []  # mapping keys whose result the driver has recorded
    retried: set[str] = set()  # mapping keys handed back by a lost worker
    events: list[str] = []
    second_round = threading.Event()

    def on_event(kind, progress, info):
        with lock:
            events.append(kind)
            if kind == "retry":
                retried.add("6:" + "-".join(map(str, info["genes"])))
            if kind == "done":
                recorded.append("6_" + "-".join(map(str, info["genes"])))
                if len(recorded) == 2:  # each evaluator has just taken its second evaluation
                    second_round.set()

    holds = tmp_path / "holds"
    driver = SearchDriver(parse_config(raw), fitness_double.factory(str(markers), delay=1.0, hold_dir=str(holds)),
                          num_teacher_layers=6, pool_resources=SLOT, on_event=on_event)
    outcome: dict = {}

    def run_search():
        try:
            outcome["result"] = driver.run()
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    # The driver runs in a thread: Ray adds and removes nodes from the main thread only.
    search = threading.Thread(target=run_search, daemon=True)
    search.start()
    assert second_round.wait(timeout=120), "the search never got going"
    # Hold the evaluations in flight (both end their 1 s sleep well after this), so the
    # survivor cannot finish the whole search alone while the replacement actor starts:
    # on a loaded 2-core machine that start can take longer than the work left.
    hold = holds / "hold"
    hold.touch()
    first_pids = {p.name for p in (holds / "evaluators").iterdir()}
    time.sleep(0.3)
    with lock:
        recorded_before = set(recorded)
    c.remove_node(workers[0], allow_graceful=graceful)  # then capacity comes back:
    replacement = c.add_node(num_cpus=1, resources=SLOT)
    lost, survivor = workers
    workers[:] = [survivor, replacement]  # the cluster the next test gets
    deadline = time.monotonic() + 180
    while not any(p.name.startswith("held-") and p.name.removeprefix("held-") not in first_pids
                  for p in holds.iterdir()):
        assert time.monotonic() < deadline, "no replacement evaluator took work"
        time.sleep(0.1)
    hold.unlink()  # the replacement is working: let everything finish
    search.join(timeout=180)
    assert not search.is_alive(), "the search did not finish"
    assert "result" in outcome, repr(outcome.get("error"))
    result = outcome["result"]

    kids = check_accounted_for(raw, result, markers)
    # The evaluation running on the lost node came back as a retry, and ran elsewhere.
    assert events.count("retry") >= 1, Counter(events)
    assert all(node_of(k) != lost.node_id[:8] for k in kids if k.data.params["mapping"] in retried)
    names = [p.name for p in markers.iterdir()]
    twins = {n.split(".again-")[0] for n in names if ".again-" in n}
    assert len(twins) <= 1  # at most the one in flight on the lost node ran twice
    assert not twins & recorded_before, "an evaluation recorded before the loss ran again"
    assert {n.split(".again-")[0] for n in names} == {k.data.params["mapping"].replace(":", "_") for k in kids}
    # The replacement actor found the replacement node and took over from there.
    nodes = Counter(node_of(k) for k in kids)
    assert replacement.node_id[:8] in nodes, nodes
    assert survivor.node_id[:8] in nodes

    # The same seeded search without the loss evaluated exactly the same mappings.
    ref_raw, ref, _, _ = undisturbed
    _, ref_kids = children(ref_raw, ref.run_id)
    assert sorted(k.data.params["mapping"] for k in ref_kids) == sorted(k.data.params["mapping"] for k in kids)
    assert ref.best.mapping == result.best.mapping


def test_pool_accounts_for_what_it_cannot_retry(cluster, quickstart_raw, tmp_path):
    raw = search_raw(quickstart_raw, tmp_path)
    raw["ray"]["max_retries"] = 1
    cfg = parse_config(raw)
    mappings = [Mapping(g, 6) for g in [(1, 2, 6), (2, 3, 6), (3, 4, 6), (4, 5, 6)]]

    class Buggy(fitness_double.LandscapeEvaluator):
        def evaluate(self, mapping):
            if mapping.genes == (2, 3, 6):
                raise RuntimeError("a bug in the evaluator")
            return super().evaluate(mapping)

    # An evaluator that raises is a failed evaluation, not a lost worker: no retry, no replacement.
    pool = EvaluatorPool(cfg, Buggy, SLOT)
    try:
        results = {r.mapping.key: r for r in pool.run(mappings, lambda ev: None)}
        assert pool.replaced == 0
    finally:
        pool.shutdown()
    assert results["6:2-3-6"].status == "failed: RuntimeError: a bug in the evaluator"
    assert "in evaluate" in results["6:2-3-6"].error  # the remote traceback, for error.txt
    assert sum(r.ok for r in results.values()) == 3

    def broken(cfg):
        raise OSError("no teacher weights on this node")

    # Evaluators that never start end the search with their reason, not a hang or endless churn.
    pool = EvaluatorPool(cfg, broken, SLOT)
    with pytest.raises(EvaluatorStartError, match="OSError: no teacher weights on this node"):
        pool.run(mappings, lambda ev: None)
    assert pool.replaced == (cfg.ray.max_retries + 1) * cfg.ray.num_evaluators - 1
    assert not pool.actors
