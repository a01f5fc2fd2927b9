"""Every shipped config validates against its teacher's shape, and builds its student.

Offline configs are checked against the real offline teacher. A hub teacher is
replaced by a local directory holding only a config.json of the same shape
(``transformers`` defaults), passed as ``--set teacher.model=<dir>``: the shape
checks need the teacher's config, never its weights or tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModel, BertConfig
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.config import load_config
from layersearch.mapping import heuristic
from layersearch.models import load_teacher
from layersearch.student import make_student

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# Hub teachers of shipped configs -> a config of the same shape. bert-base-uncased is
# transformers' BertConfig defaults: 12 layers, 768 wide, 12 heads of 64, FFN 3072.
HUB_SHAPES = {"bert-base-uncased": BertConfig}
runner = CliRunner()


def teacher_overrides(path: Path, tmp_path: Path, shared_data: Path) -> list[str]:
    """``--set`` values that point a config at a local teacher of its shape and at the data."""
    raw = yaml.safe_load(path.read_text())
    overrides = []
    # Configs name the data relative to the repository root (../shared/data); the tests
    # find it where conftest does.
    if raw.get("corpus", {}).get("paths"):
        paths = [p.replace("../shared/data", str(shared_data)) for p in raw["corpus"]["paths"]]
        overrides.append(f"corpus.paths=[{', '.join(paths)}]")
    source = raw.get("tasks", {}).get("source", "hub")
    overrides.append(f"tasks.source={source.replace('../shared/data', str(shared_data))}")
    model = raw.get("teacher", {}).get("model", "offline:minilm-l6")
    if not model.startswith("offline:"):
        assert model in HUB_SHAPES, f"{path.name}: add the shape of teacher '{model}' to HUB_SHAPES"
        HUB_SHAPES[model](vocab_size=30522).save_pretrained(tmp_path / "teacher")
        overrides.append(f"teacher.model={tmp_path / 'teacher'}")
    return overrides


def validate(path: Path, overrides: list[str]):
    return runner.invoke(app, ["validate", str(path), *[a for o in overrides for a in ("--set", o)]])


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "bert-base-4l312.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_against_its_teacher(path, tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # cache and tracking paths must not matter
    result = validate(path, teacher_overrides(path, tmp_path, shared_data))
    assert result.exit_code == 0, result.stderr
    assert f"ok {path}" in result.stdout


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_builds_its_student(path, tmp_path, shared_data):
    """What validation passed, the student builder accepts: shape, init and objective."""
    overrides = teacher_overrides(path, tmp_path, shared_data)
    cfg = load_config(path, overrides)
    if cfg.teacher.model.startswith("offline:"):
        teacher = load_teacher(cfg.teacher.model, attentions=False)
    else:  # random weights of the hub teacher's shape; a small vocabulary keeps it quick
        tcfg = BertConfig.from_pretrained(cfg.teacher.model, vocab_size=1000)
        torch.manual_seed(0)
        teacher = AutoModel.from_config(tcfg).eval()
    t, s = teacher.config, cfg.student
    mapping = heuristic("uniform", s.num_layers, t.num_hidden_layers)
    # Four blocks: one importance batch for etd-impt, however many the config asks for.
    data = torch.randint(1, t.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    student, loss, report = make_student(cfg, teacher, mapping, data)
    c = student.config
    want = (s.hidden_size or t.hidden_size, s.num_attention_heads or t.num_attention_heads,
            s.intermediate_size or t.intermediate_size)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        s.num_layers, *want)
    assert report["method"] == s.init.method
    with torch.no_grad():
        out = student.eval()(input_ids=data[:2]).last_hidden_state
    assert out.shape == (2, 16, c.hidden_size) and torch.isfinite(out).all()


BERT_BASE_4L312 = ROOT / "configs" / "bert-base-4l312.yaml"
BROKEN = {
    # overrides of the bert-base recipe (space-separated): words its one error line must hold
    "student.num_attention_heads=7": ["student.num_attention_heads", "do not divide hidden_size 312"],
    "student.num_attention_heads=4": ["student.num_attention_heads", "heads 78 wide", "use 6 or more"],
    "student.num_attention_heads=6": ["objective.terms.attention_mse", "6 heads"],
    "student.num_layers=13": ["student.num_layers", "deeper than the teacher (12 layers)"],
    "student.init.method=copy": ["student.hidden_size", "narrower", "etd-impt"],
    "student.intermediate_size=4096": ["student.intermediate_size", "exceeds the teacher's 3072"],
    "student.init.method=wid student.num_attention_heads=4": ["student.num_attention_heads", "'wid'",
                                                              "312/4 = 78 exceeds the teacher's 64"],
}


@pytest.mark.parametrize("override", sorted(BROKEN))
def test_broken_bert_base_recipe_fails_before_training_with_one_line(override, tmp_path, shared_data):
    overrides = teacher_overrides(BERT_BASE_4L312, tmp_path, shared_data)
    result = validate(BERT_BASE_4L312, [*overrides, *override.split()])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for word in BROKEN[override]:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_can_reach_a_verdict(path):
    """A verdict is about a mapping only with 2+ distillation runs per mapping: the top rung, where
    the final race and the verdict happen, must hold at least two proxy slices."""
    from layersearch.search.racing import Ladder

    ladder = Ladder.of(load_config(path))
    assert len({s for s, _ in ladder.units(ladder.top)}) >= 2


@pytest.mark.parametrize("path", [p for p in CONFIGS if (yaml.safe_load(p.read_text()).get("proxy") or {}).get(
    "evidence")], ids=lambda p: p.name)
def test_shipped_evidence_is_about_the_shipped_proxy(path, tmp_path, shared_data, monkeypatch):
    """A config that carries the ladder's figures runs the proxy they were measured on; changing
    that proxy (here its step budget) makes validate say the figures no longer apply."""
    monkeypatch.chdir(tmp_path)
    overrides = teacher_overrides(path, tmp_path, shared_data)
    from layersearch.fidelity import applicable_evidence, evidence_drift

    cfg = load_config(path, overrides)
    assert evidence_drift(cfg) == [] and applicable_evidence(cfg) is cfg.proxy.evidence
    assert cfg.proxy.evidence.spec["proxy"]["train"]["max_steps"] == cfg.proxy.train.max_steps
    steps = cfg.proxy.train.max_steps
    result = validate(path, [*overrides, f"proxy.train.max_steps={steps + 1}"])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert f"proxy.train.max_steps: measured at {steps}, this run {steps + 1}" in said
    assert "so its figures do not apply here" in said
