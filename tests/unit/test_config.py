"""Config validation at the door: every malformed config is one line and exit code 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.config import Config, ConfigError, apply_overrides, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _mutate(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    *path, last = dotted.split(".")
    for k in path:
        node = node.setdefault(k, {})
    node[last] = value
    return raw


def _narrow(raw: dict, method: str, hidden: int, heads: int) -> dict:
    raw = _mutate(_mutate(raw, "student.init.method", method), "student.hidden_size", hidden)
    return _mutate(_mutate(raw, "student.num_attention_heads", heads), "student.intermediate_size", 768)


BAD_CONFIGS = {
    # name: (mutation or raw text, words the single error line must contain)
    "unknown top-level key": (lambda r: {**r, "studnet": {"num_layers": 2}}, ["studnet", "unknown key"]),
    "unknown nested key": (lambda r: _mutate(r, "search.popsize", 4), ["search.popsize", "unknown key"]),
    "wrong type": (lambda r: _mutate(r, "search.population", "many"), ["search.population", "integer"]),
    "student deeper than teacher": (lambda r: _mutate(r, "student.num_layers", 8), ["student.num_layers", "deeper"]),
    "heads do not divide width": (lambda r: _mutate(r, "student.num_attention_heads", 5), ["num_attention_heads", "divide"]),
    "student wider than teacher": (lambda r: _mutate(r, "student.hidden_size", 768), ["student.hidden_size", "exceeds"]),
    "missing corpus path": (lambda r: _mutate(r, "corpus.paths", ["/nonexistent/corpus"]), ["corpus.paths.0", "not found"]),
    "missing task folder": (lambda r: _mutate(r, "tasks.source", "/nonexistent/glue"), ["tasks.source", "not found"]),
    "unknown task": (lambda r: _mutate(r, "tasks.names", ["sst2", "sts9"]), ["tasks", "sts9"]),
    "unknown objective": (lambda r: _mutate(r, "objective.terms", {"hiden_mse": 1.0}), ["objective", "hiden_mse"]),
    "negative learning rate": (lambda r: _mutate(r, "proxy.train.learning_rate", -1), ["proxy.train.learning_rate", "greater than 0"]),
    "probability above one": (lambda r: _mutate(r, "search.cxpb", 1.5), ["search.cxpb", "less than or equal to 1"]),
    "logit KD without MLM head": (lambda r: _mutate(r, "objective.terms", {"logit_kd": 1.0}), ["logit_kd", "MLM head"]),
    "missing corpus section": (lambda r: {k: v for k, v in r.items() if k != "corpus"}, ["corpus", "required"]),
    "init layer list too short": (lambda r: _mutate(r, "student.init.layers", [2, 4]), ["student.init.layers", "3-layer"]),
    "no budget": (lambda r: _mutate(r, "proxy.train", {"max_steps": None}), ["proxy.train", "max_steps"]),
    "weights all zero": (lambda r: _mutate(r, "tasks.weights", [0, 0]), ["tasks", "positive weight"]),
    "repeated seed": (lambda r: _mutate(r, "tasks.finetune.seeds", [0, 1, 0]), ["tasks.finetune.seeds", "repeats"]),
    "no slice seed": (lambda r: _mutate(r, "proxy.slice_seeds", []), ["proxy.slice_seeds", "at least one"]),
    "slice_seed and slice_seeds": (lambda r: _mutate(r, "proxy.slice_seed", 1), ["proxy", "slice_seeds only"]),
    "proxy init layer beyond the teacher": (lambda r: _mutate(r, "proxy.init_layers", [1, 2, 9]),
                                            ["proxy.init_layers", "1..6"]),
    "racing rungs that do not climb": (lambda r: _mutate(r, "search.racing", {"seeds": [2, 1]}),
                                       ["search.racing", "each rung must add"]),
    "unknown strategy": (lambda r: _mutate(r, "search.strategy", "greedy"), ["search.strategy", "exhaustive"]),
    "old strategy and variant": (lambda r: _mutate(_mutate(r, "search.strategy", "simple"), "search.variant",
                                                   "simple"), ["search", "variant only"]),
    "ETD head wider than the teacher's": (lambda r: _narrow(r, "etd-impt", 192, 4),
                                          ["student.num_attention_heads", "heads 48 wide", "use 6 or more"]),
    "attention_mse with fewer heads": (lambda r: _narrow(r, "etd-rand", 192, 6),
                                       ["objective.terms.attention_mse", "6 heads", "12"]),
    "copy into a narrower student": (lambda r: _narrow(r, "copy", 192, 12),
                                     ["student.hidden_size", "narrower", "etd-rand"]),
    "YAML syntax error": ("teacher:\n  model: [unclosed\n", ["YAML syntax error", "line"]),
    "empty file": ("", ["empty"]),
    "top level is a list": ("- teacher\n- student\n", ["top level", "mapping"]),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_malformed_config_is_one_line_exit_2(name, quickstart_raw, write_config):
    bad, words = BAD_CONFIGS[name]
    path = write_config(bad if isinstance(bad, str) else bad(quickstart_raw))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "config file not found" in result.stderr


def test_valid_quickstart_prints_resolved_config(quickstart_raw, write_config):
    path = write_config(quickstart_raw)
    result = runner.invoke(app, ["validate", str(path), "--set", "search.population=16"])
    assert result.exit_code == 0, result.output
    assert "population: 16" in result.stdout
    assert "importance_batches: 4" in result.stdout  # defaults are shown resolved


def test_validate_as_a_real_process_exits_2(write_config):
    path = write_config("corpus: {paths: [x]}\nsearch: {population: nope}\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from layersearch.cli import app; app()", "validate", str(path)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "search.population" in proc.stderr and "Traceback" not in proc.stderr


def test_overrides_parse_yaml_values_and_reach_validation(quickstart_raw):
    raw = apply_overrides(copy.deepcopy(quickstart_raw), ["search.population=12", "tasks.names=[rte]",
                                                          "student.init.layers=[1,2,6]"])
    cfg = parse_config(raw)
    assert cfg.search.population == 12
    assert cfg.tasks.names == ["rte"]
    assert cfg.student.init.layers == [1, 2, 6]
    with pytest.raises(ConfigError, match="search.population"):
        parse_config(apply_overrides(copy.deepcopy(quickstart_raw), ["search.population=1"]))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["search.population"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"search": 3}, ["search.population=4"])


def test_schema_collects_every_problem(quickstart_raw):
    raw = _mutate(_mutate(quickstart_raw, "search.population", "x"), "ray.num_gpus", -1)
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert len(exc.value.problems) == 2


def test_shipped_configs_pass_schema():
    for name in ("quickstart.yaml", "bert-base-4l312.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert isinstance(cfg, Config)
        first = (ROOT / "configs" / name).read_text().splitlines()[0]
        assert first.startswith("#")


def test_digest_changes_with_any_field(quickstart_raw):
    base = parse_config(quickstart_raw)
    other = parse_config(_mutate(quickstart_raw, "proxy.train.max_steps", 41))
    assert base.digest("proxy") != other.digest("proxy")
    assert base.digest("proxy") == parse_config(copy.deepcopy(quickstart_raw)).digest("proxy")
