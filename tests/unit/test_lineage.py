"""Distill lineage: the tags a distill run gets from its --mapping, and `show` listing a search's distill runs.

Every store is a real SQLite MLflow store in tmp_path; search and distill runs are made with MlflowClient.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.config import parse_config
from layersearch.mapping import Mapping, save_mapping
from layersearch.resolve import MAPPING_SOURCE_TAG, SEARCH_RUN_TAG, VERDICT_TAG, lineage_tags

runner = CliRunner()


@pytest.fixture
def cfg(quickstart_raw):
    return parse_config(quickstart_raw)


@pytest.fixture
def client(cfg):
    return MlflowClient(cfg.tracking.uri)


def _search_run(client, experiment: str = "layersearch", verdict: str | None = None) -> str:
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    tags = {"layersearch.kind": "search", **({"verdict": verdict} if verdict else {})}
    run = client.create_run(exp_id, tags=tags, run_name="search")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _mapping_file(path, **extra):
    return save_mapping(Mapping((2, 4, 6), 6), path, "offline:minilm-l6", ["hidden_mse"], **extra)


@pytest.mark.parametrize(("spec", "source"), [
    ("uniform", "heuristic:uniform"),
    ("last", "heuristic:last"),
    ("2,4,6", "genes:2,4,6"),
    ("[2, 4, 6]", "genes:2,4,6"),
    ("2-4-6", "genes:2,4,6"),
    ("not-genes", "genes:not-genes"),  # unreadable: resolve_any_mapping reports it, lineage does not
])
def test_heuristics_and_gene_lists_are_normalised_without_touching_the_store(cfg, tmp_path, spec, source):
    assert lineage_tags(spec, cfg) == {MAPPING_SOURCE_TAG: source}
    assert not (tmp_path / "mlflow.db").exists()


def test_a_search_run_id_gives_the_run_and_its_verdict(cfg, client):
    run_id = _search_run(client, verdict="better")
    assert lineage_tags(run_id, cfg) == {MAPPING_SOURCE_TAG: f"search:{run_id}", SEARCH_RUN_TAG: run_id,
                                         VERDICT_TAG: "better"}
    quiet = _search_run(client)  # a search that never compared with uniform
    assert lineage_tags(quiet, cfg) == {MAPPING_SOURCE_TAG: f"search:{quiet}", SEARCH_RUN_TAG: quiet}


def test_an_unknown_run_or_an_unreachable_store_leaves_the_verdict_out(cfg, client, monkeypatch):
    missing = "0" * 32
    assert lineage_tags(missing, cfg) == {MAPPING_SOURCE_TAG: f"search:{missing}", SEARCH_RUN_TAG: missing}
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": "http://127.0.0.1:9"})})
    assert lineage_tags(missing, down) == {MAPPING_SOURCE_TAG: f"search:{missing}", SEARCH_RUN_TAG: missing}


def test_a_file_exported_by_a_search_names_it_and_its_verdict(cfg, tmp_path, monkeypatch):
    run_id = "a" * 32
    _mapping_file(tmp_path / "best.json", search_run_id=run_id, verdict="indistinguishable")
    monkeypatch.chdir(tmp_path)
    tags = lineage_tags("best.json", cfg)  # relative, as a user types it
    assert tags == {MAPPING_SOURCE_TAG: f"file:{tmp_path.resolve() / 'best.json'}", SEARCH_RUN_TAG: run_id,
                    VERDICT_TAG: "indistinguishable"}


def test_a_file_without_a_verdict_word_takes_the_runs_tag(cfg, client, tmp_path):
    run_id = _search_run(client, verdict="worse")
    path = _mapping_file(tmp_path / "best.json", search_run_id=run_id, verdict="no comparison")
    assert lineage_tags(str(path), cfg)[VERDICT_TAG] == "worse"


@pytest.mark.parametrize("content", [None, "{not json", '{"format_version": 99, "genes": [1], "num_teacher_layers": 6}'])
def test_old_hand_written_or_broken_files_give_their_path_only(cfg, tmp_path, content):
    path = tmp_path / "mine.json"
    if content is None:
        _mapping_file(path)  # an old export, or one written by hand: no search named
    else:
        path.write_text(content)
    assert lineage_tags(str(path), cfg) == {MAPPING_SOURCE_TAG: f"file:{path.resolve()}"}


def _distill_run(client, tags: dict, experiment: str = "layersearch", loss: float | None = None,
                 output_dir: str | None = None) -> str:
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, tags={"layersearch.kind": "distill", **tags}, run_name="distill")
    rid = run.info.run_id
    for m, g in enumerate((2, 4, 6), 1):
        client.log_param(rid, f"gene_{m}", g)
    if output_dir:
        client.log_param(rid, "distill.output_dir", output_dir)
    if loss is not None:
        client.log_metric(rid, "final_loss", loss)
        client.set_terminated(rid)
    return rid


def test_show_lists_the_distill_runs_made_from_a_search(cfg, client):
    search = _search_run(client, verdict="better")
    other = _search_run(client)
    finished = _distill_run(client, lineage_tags(search, cfg), loss=0.1234, output_dir="/shared/out/student")
    # Another experiment (tracking.experiment differs), still running: found as well.
    running = _distill_run(client, lineage_tags(search, cfg), experiment="distills")
    unrelated = _distill_run(client, lineage_tags(other, cfg), loss=9.0)
    heuristic = _distill_run(client, lineage_tags("uniform", cfg), loss=8.0)

    out = runner.invoke(app, ["show", search, "--tracking-uri", cfg.tracking.uri])
    assert out.exit_code == 0, out.output
    rows = _table_rows(out.stdout)
    assert set(rows) == {finished, running}, out.stdout
    assert unrelated not in out.stdout and heuristic not in out.stdout
    assert rows[finished] == ["FINISHED", "[2,4,6]", "0.1234", "/shared/out/student"]
    assert rows[running] == ["RUNNING", "[2,4,6]", "-", "-"]
    assert "no distill run from this search yet" not in out.stdout


def _table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the printed tables keyed by a first cell that is a run id, cells without spaces
    (rich folds long cells onto continuation lines at the test's 80 columns)."""
    rows, current = {}, None
    for line in text.splitlines():
        if not line.startswith("│"):
            current = None
            continue
        cells = [c.replace(" ", "") for c in line.strip("│").split("│")]
        if cells[0]:
            current = cells[1:] if len(cells[0]) == 32 else None
            if current is not None:
                rows[cells[0]] = current
        elif current is not None:
            for i, extra in enumerate(cells[1:]):
                current[i] += extra
    return rows


def test_show_says_when_no_distill_run_came_from_a_search(cfg, client):
    search = _search_run(client)
    _distill_run(client, lineage_tags("uniform", cfg), loss=1.0)
    out = runner.invoke(app, ["show", search, "--tracking-uri", cfg.tracking.uri])
    assert out.exit_code == 0, out.output
    assert "no distill run from this search yet" in out.stdout


def test_export_names_the_search_in_files_that_did_not(cfg, client, tmp_path):
    search = _search_run(client, verdict="better")
    old = _mapping_file(tmp_path / "logged" / "best_mapping.json", verdict="better")  # an older search's artifact
    client.log_artifact(search, str(old))
    exported = tmp_path / "best.json"
    out = runner.invoke(app, ["export", search, "-o", str(exported), "--tracking-uri", cfg.tracking.uri])
    assert out.exit_code == 0, out.output
    record = json.loads(exported.read_text())
    assert record["search_run_id"] == search and record["genes"] == [2, 4, 6]
    assert lineage_tags(str(exported), cfg)[SEARCH_RUN_TAG] == search
