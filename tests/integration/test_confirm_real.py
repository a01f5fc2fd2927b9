"""`layersearch confirm` and the init baseline on the real offline teacher and shared data."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.config import parse_config
from layersearch.fitness.record import unit_key

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture
def confirm_config(quickstart_raw, write_config, tmp_path):
    raw = quickstart_raw
    raw["distill"]["corpus_blocks"] = 96
    raw["distill"]["train"].update(max_steps=10, batch_size=8, learning_rate=5e-4, checkpoint_every=4)
    raw["confirm"]["tasks"].update(names=["sst2", "mrpc"])
    raw["confirm"]["tasks"]["finetune"].update(train_examples=32, dev_examples=48, seeds=[0, 1])
    raw["confirm"]["output_dir"] = str(tmp_path / "confirm")
    raw["search"]["cache_dir"] = str(tmp_path / "evaluations")
    return write_config(raw), raw


def _runs(raw):
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    return client.search_runs([exp.experiment_id])


def _kind(runs, kind):
    return [r for r in runs if r.data.tags.get("layersearch.kind") == kind]


def _final_records(raw):
    from layersearch.confirm import keys
    from layersearch.fitness import local_device
    from layersearch.mapping import Mapping
    from layersearch.search.cache import EvaluationCache

    cfg = parse_config(raw)
    cache = EvaluationCache(raw["search"]["cache_dir"], keys(cfg, local_device())[0])
    return cache.get(Mapping((2, 4, 6), 6)), cache.get(Mapping((1, 2, 3), 6))


def test_confirm_distils_scores_pairs_logs_and_caches(confirm_config, monkeypatch):
    path, raw = confirm_config
    result = runner.invoke(app, ["confirm", str(path), "-m", "uniform", "-m", "lower"])
    assert result.exit_code == 0, result.output
    assert "lower vs uniform:" in result.stdout
    assert "distillation gain" in result.stdout
    runs = _runs(raw)
    assert all(r.info.status == "FINISHED" for r in runs)
    (confirm,) = _kind(runs, "confirm")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == confirm.info.run_id]
    distills = _kind(children, "distill")
    assert sorted(r.data.tags["layersearch.mapping_source"] for r in distills) == \
        ["heuristic:lower", "heuristic:uniform"]
    assert all(r.data.tags["layersearch.confirm_run"] == confirm.info.run_id for r in distills)
    finals = _kind(children, "final-evaluation")
    assert len(finals) == 2 and all(r.data.tags["layersearch.distill_runs"] for r in finals)
    # Copied inits follow the mapping here (student.init.layers: mapping): one baseline each.
    assert len(_kind(children, "init-baseline")) == 2
    # One distillation seed: a gain is about these students, not their mappings (issue 35).
    assert {r.data.tags["distillation_gain"] for r in finals} == {"this student"}
    tags, metrics = confirm.data.tags, confirm.data.metrics
    assert tags["verdict/1-2-3"] == "no verdict"  # one distillation seed: these two students, not mappings
    assert metrics["diff_ci_low/1-2-3"] <= metrics["diff/1-2-3"] <= metrics["diff_ci_high/1-2-3"]
    assert tags["distillation_gain/1-2-3"] == "this student"

    # Each final student's model card holds its downstream scores from this confirm run.
    from layersearch.confirm import FinalStudents
    from layersearch.fitness import local_device
    from layersearch.mapping import Mapping

    student = FinalStudents.of(parse_config(raw), local_device()).path(Mapping((1, 2, 3), 6), 0)
    card = (student / "README.md").read_text()
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    scores = card.split("## Downstream scores")[1].split("<!-- /layersearch:scores -->")[0]
    assert confirm.info.run_id in scores and "No downstream scores yet" not in card
    rows = [r for r in scores.splitlines() if r.startswith("| ") and not r.startswith("| task")]
    assert len(rows) >= 2 and all(-1.0 <= float(r.split("|")[2]) <= 1.0 for r in rows)  # sst2 and mrpc metrics

    # Paired: the same distillation seed, fine-tune seeds and dev examples for both mappings.
    uniform, lower = _final_records(raw)
    assert set(uniform.units) == set(lower.units) == {unit_key(0, 0), unit_key(0, 1)}
    assert uniform.dev_labels == lower.dev_labels and set(uniform.dev_labels) == {"sst2", "mrpc"}
    assert uniform.units[unit_key(0, 0)]["distill_s"] > 0

    # A rerun does no work: no distillation, no fine-tune; the same verdict from the cache.
    def no_work(*a, **k):
        raise AssertionError("a cached confirm ran work again")

    monkeypatch.setattr("layersearch.workflows.distill.distill", no_work)
    monkeypatch.setattr("layersearch.confirm.FinalReadout.score", no_work)
    again = runner.invoke(app, ["confirm", str(path), "-m", "uniform", "-m", "lower"])
    assert again.exit_code == 0, again.output
    assert again.stdout.count(": cached") == 4  # two final students, two init baselines
    assert f"{metrics['diff/1-2-3']:+.4f}" in again.stdout

    # More fine-tune seeds: only the missing seed is fine-tuned, on the students already distilled.
    monkeypatch.undo()
    monkeypatch.setattr("layersearch.workflows.distill.distill", no_work)
    from layersearch.confirm import FinalReadout

    asked, real = [], FinalReadout.score

    def counting(self, ev, encoder, seed, finetune_seeds, *a, **k):
        asked.append(list(finetune_seeds))
        return real(self, ev, encoder, seed, finetune_seeds, *a, **k)

    monkeypatch.setattr(FinalReadout, "score", counting)
    more = runner.invoke(app, ["confirm", str(path), "-m", "uniform", "-m", "lower",
                               "--set", "confirm.tasks.finetune.seeds=[0,1,2]"])
    assert more.exit_code == 0, more.output
    assert asked == [[2], [2], [2], [2]]  # two students and two inits, seed 2 each


def test_confirm_resumes_a_distillation_killed_midway(confirm_config, monkeypatch, tmp_path):
    from test_distill_real import _fail_after

    from layersearch.workflows.distill import distill

    path, raw = confirm_config
    _fail_after(monkeypatch, 5)  # the first distillation dies at step 6, past its checkpoint at 4
    crashed = runner.invoke(app, ["confirm", str(path), "-m", "uniform", "-m", "lower"])
    assert crashed.exit_code == 1 and "loss became nan at step 6" in crashed.stderr
    monkeypatch.undo()
    (confirm,) = _kind(_runs(raw), "confirm")
    assert confirm.info.status == "FAILED"
    again = runner.invoke(app, ["confirm", str(path), "-m", "uniform", "-m", "lower"])
    assert again.exit_code == 1 and "pass --resume to continue it" in again.stderr
    resumed = runner.invoke(app, ["confirm", str(path), "-m", "uniform", "-m", "lower", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    runs = _runs(raw)
    # The killed distill run was reopened and finished, not started anew.
    uniform_distills = [r for r in _kind(runs, "distill")
                        if r.data.tags["layersearch.mapping_source"] == "heuristic:uniform"]
    assert [r.info.status for r in uniform_distills] == ["FINISHED"]
    # ... with the weights of a run never interrupted.
    from layersearch.confirm import FinalStudents
    from layersearch.fitness import local_device
    from layersearch.mapping import Mapping

    cfg = parse_config(raw)
    resumed_dir = FinalStudents.of(cfg, local_device()).path(Mapping((2, 4, 6), 6), 0)
    whole = distill(cfg, "uniform", tmp_path / "uninterrupted", progress=False).student_path
    a, b = load_file(resumed_dir / "model.safetensors"), load_file(whole / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    uniform, lower = _final_records(raw)
    assert uniform.ok and lower.ok and set(uniform.units) == set(lower.units)


def test_init_baselines_are_the_untouched_inits(quickstart_raw):
    """The proxy's baseline is a student of teacher layers 2, 4, 6 (proxy.init_layers: uniform)
    fine-tuned exactly as any student; the final students' is the copy ``distill`` starts from."""
    from transformers import AutoModel, BertConfig

    from layersearch.confirm import FinalReadout
    from layersearch.fitness import Evaluator
    from layersearch.mapping import Mapping
    from layersearch.models import load_teacher
    from layersearch.readout.finetune import finetune_all

    raw = quickstart_raw
    raw["proxy"]["slice_blocks"] = 64
    raw["tasks"]["names"] = ["sst2"]
    raw["tasks"]["finetune"].update(train_examples=256, dev_examples=64, seeds=[0, 1])
    raw["distill"]["corpus_blocks"] = 64
    cfg = parse_config(raw)
    evaluator = Evaluator(cfg)
    lower = Mapping((1, 2, 3), 6)
    init = evaluator.evaluate_init(lower)
    assert init.ok, init.status
    assert init.genes == [2, 4, 6] and init.spec_key == evaluator.init_spec_key != evaluator.spec_key
    assert evaluator.init_of(Mapping((4, 5, 6), 6)) == init.mapping  # one init for every mapping

    teacher = load_teacher(cfg.teacher.model)
    by_hand = AutoModel.from_config(BertConfig(**{**teacher.config.to_dict(), "num_hidden_layers": 3}))
    by_hand.embeddings.load_state_dict(teacher.embeddings.state_dict())
    for layer, t in zip(by_hand.encoder.layer, (2, 4, 6), strict=True):
        layer.load_state_dict(teacher.encoder.layer[t - 1].state_dict())
    by_hand.pooler.load_state_dict(teacher.pooler.state_dict())
    results = finetune_all(by_hand, evaluator.tokenizer, cfg.tasks, evaluator.datasets, "cpu",
                           encoded=evaluator.encoded)
    from layersearch.fitness.record import pack_labels

    for r in results:
        assert init.units[unit_key(0, r.seed)]["tasks"]["sst2"]["predictions"] == pack_labels(r.predictions)
    assert any(len(set(r.predictions.tolist())) > 1 for r in results)  # not a constant predictor

    # The final students' init (student.init.layers: mapping) is the teacher's layers 1, 2, 3.
    student = FinalReadout(cfg).init_student(lower, seed=0)
    for layer, t in zip(student.encoder.layer, (1, 2, 3), strict=True):
        theirs = teacher.encoder.layer[t - 1].state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in layer.state_dict().items())
    assert json.dumps(init.to_dict())  # plain data, as cached
