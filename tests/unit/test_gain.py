"""Distillation gain (after minus the untouched init, paired) and the keys of the new records."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from layersearch.config import ConfigError, apply_overrides, parse_config
from layersearch.fitness import Evaluation, PairingError, init_spec_key, spec_key, summarize
from layersearch.fitness.aggregate import distillation_gain, gain_word
from layersearch.fitness.record import pack_labels, unit_key
from layersearch.fitness.spec import final_init_spec_key, final_spec_key, final_student_key
from layersearch.fitness.stats import Estimate

N = 400


def record(p_right: float, seeds=(0, 1, 2), spec: str = "s", genes=(2, 4, 6), rng_seed: int = 0,
           labels: np.ndarray | None = None, slices=(0,)) -> Evaluation:
    """Units whose predictions are right with probability ``p_right`` (each unit its own draw);
    one distillation run per slice."""
    rng = np.random.default_rng(rng_seed)
    y = np.arange(N) % 2 if labels is None else labels
    ev = Evaluation(list(genes), 6, spec, dev_labels={"sst2": pack_labels(y)}, majority={"sst2": 0.5})
    for s, f in [(s, f) for s in slices for f in seeds]:
        right = rng.random(N) < p_right
        ev.units[unit_key(s, f)] = {"slice_seed": s, "finetune_seed": f, "distill_s": 1.0,
                                    "tasks": {"sst2": {"predictions": pack_labels(np.where(right, y, 1 - y)),
                                                       "metrics": {}, "seconds": 1.0, "steps": 1}}}
    return summarize(ev, ["sst2"])


def test_gain_is_the_paired_difference_and_its_word_follows_the_interval():
    three = (0, 1, 2)  # three distillation runs: the gain is about the mapping
    init = record(0.6, spec="init", rng_seed=1, slices=three)
    better = record(0.8, rng_seed=2, slices=three)
    g = distillation_gain(better, init, ["sst2"])
    assert g.mean == pytest.approx(better.fitness - init.fitness, abs=1e-9)
    assert g.low > 0 and gain_word(g) == "positive"
    assert gain_word(distillation_gain(init, better, ["sst2"])) == "negative"
    # The same students: no gain, and the word says so.
    same = record(0.6, spec="s", rng_seed=1, slices=three)
    g0 = distillation_gain(same, init, ["sst2"])
    assert g0.mean == 0 and gain_word(g0) == "none"


def test_one_distillation_run_gains_only_for_this_student():
    """One run (three fine-tune seeds of one student): the interval excludes 0, but it holds one
    student's noise, so the gain word is "this student", as a verdict would be "no verdict"."""
    from layersearch.fitness.aggregate import gain_text

    g = distillation_gain(record(0.8, rng_seed=2), record(0.6, spec="init", rng_seed=1), ["sst2"])
    assert g.low > 0 and g.distillation_runs == 1
    assert gain_word(g) == "this student"
    text = gain_text(g)
    assert "-> this student" in text and "positive" not in text and "proxy.slice_seeds" in text


def test_gain_word_thresholds():
    def est(low, high):
        return Estimate((low + high) / 2, low, high, 3, 0.1, 0.1, 2.0, 0.5)

    assert gain_word(est(0.001, 0.1)) == "positive"
    assert gain_word(est(-0.001, 0.1)) == "none"
    assert gain_word(est(-0.1, -0.001)) == "negative"
    assert gain_word(Estimate(0.05, 0.001, 0.1, 3, 0.1, 0.1, 2.0, 0.5, 1)) == "this student"


def test_gain_needs_shared_units_and_dev_examples():
    init = record(0.6, seeds=(5, 6), spec="init")
    with pytest.raises(PairingError, match="share no"):
        distillation_gain(record(0.7), init, ["sst2"])
    other_dev = record(0.6, spec="init", labels=(np.arange(N) // 2) % 2)
    with pytest.raises(PairingError, match="different dev examples"):
        distillation_gain(record(0.7), other_dev, ["sst2"])


def test_init_and_final_keys_name_what_decides_them(quickstart_raw):
    cfg = parse_config(quickstart_raw)

    def changed(**sections):
        raw = {k: dict(v) if isinstance(v, dict) else v for k, v in quickstart_raw.items()}
        for dotted, value in sections.items():
            section, *path = dotted.split("__")
            node = raw[section] = dict(raw.get(section, {}))
            for k in path[:-1]:
                node[k] = dict(node.get(k, {}))
                node = node[k]
            node[path[-1]] = value
        return parse_config(raw)

    longer = changed(proxy__train__max_steps=400)
    # One init baseline for every proxy length; the proxy's own key still differs.
    assert init_spec_key(longer) == init_spec_key(cfg) and spec_key(longer) != spec_key(cfg)
    assert init_spec_key(changed(proxy__init_layers="lower")) != init_spec_key(cfg)
    # The switch and the confirm section change no proxy unit.
    assert spec_key(changed(tasks__init_baseline=False)) == spec_key(cfg)
    assert spec_key(changed(confirm__distill_seeds=3)) == spec_key(cfg)
    # Final students: what they are trained and scored with, not where they run.
    assert final_spec_key(changed(distill__workers=2)) == final_spec_key(cfg)
    assert final_spec_key(changed(confirm__output_dir="elsewhere")) == final_spec_key(cfg)
    assert final_spec_key(changed(distill__train__max_steps=999)) != final_spec_key(cfg)
    assert final_spec_key(changed(confirm__tasks__names=["sst2"])) != final_spec_key(cfg)
    assert final_spec_key(longer) == final_spec_key(cfg)
    assert final_init_spec_key(changed(distill__train__max_steps=999)) == final_init_spec_key(cfg)
    # The students themselves serve any downstream evaluation.
    assert final_student_key(changed(confirm__tasks__names=["sst2"])) == final_student_key(cfg)
    assert final_student_key(changed(distill__train__max_steps=999)) != final_student_key(cfg)
    assert final_init_spec_key(cfg) != final_spec_key(cfg) != spec_key(cfg)


def test_confirm_config_needs_measured_seed_noise(quickstart_raw):
    quickstart_raw["confirm"] = {"tasks": {"finetune": {"seeds": [0]}}}
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        parse_config(quickstart_raw)
    quickstart_raw["confirm"] = {"tasks": {"names": ["sst3"]}}
    with pytest.raises(ConfigError, match="unknown task"):
        parse_config(quickstart_raw)


EVIDENCE = {"tau": 0.6, "tau_ci": [0.2, 0.9], "gain": 0.03, "gain_ci": [0.01, 0.05], "source": "bench/ladder.py"}


def with_evidence(raw: dict) -> dict:
    """``raw`` carrying ladder figures measured on its own proxy (its evidence spec)."""
    from layersearch.fidelity import evidence_spec

    raw = copy.deepcopy(raw)
    raw["proxy"]["evidence"] = None
    raw["proxy"]["evidence"] = {**EVIDENCE, "spec": evidence_spec(parse_config(raw))}
    return raw


def _perturbed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 if value else 0.5
    return None


def test_fidelity_evidence_follows_every_field_of_the_proxy_spec(quickstart_raw):
    """Every key of the spec: a run whose value differs is another proxy, gets "not measured" and
    no figures. Then every setting of the config: one that changes the spec key (or the seeds)
    gets it too, including the settings a hand-written list left out."""
    from layersearch.fidelity import _leaves, applicable_evidence, config_fidelity_text, evidence_drift, fidelity_tag
    from layersearch.tracking import flatten

    raw = with_evidence(quickstart_raw)
    cfg = parse_config(raw)
    assert evidence_drift(cfg) == [] and fidelity_tag(cfg) == "validated"
    assert "Kendall tau +0.60" in config_fidelity_text(cfg)
    leaves = _leaves(raw["proxy"]["evidence"]["spec"])
    assert {"teacher.files.model.safetensors", "student.init.method", "student.hidden_size", "seeds.slices",
            "proxy.train.max_steps"} <= set(leaves) and any(k.startswith("corpus.identity") for k in leaves)
    for key in leaves:
        changed = copy.deepcopy(raw)
        node = changed["proxy"]["evidence"]["spec"]
        *path, last = key.split(".") if not key.startswith("teacher.files.") else ["teacher", "files",
                                                                                  key[len("teacher.files."):]]
        for k in path:
            node = node[k]
        node[last] = ["another proxy", node[last]]
        cfg = parse_config(changed)
        assert [d.split(": measured")[0] for d in evidence_drift(cfg)] == [key]
        assert applicable_evidence(cfg) is None and fidelity_tag(cfg) == "unmeasured"
        assert "not measured" in config_fidelity_text(cfg) and "Kendall" not in config_fidelity_text(cfg)
    # The config side, for both readouts: any change of a unit's identity (or seeds) is another proxy.
    named = [("student.hidden_size", 192), ("student.init.method", "etd-rand"), ("proxy.slice_seeds", [0, 1]),
             ("corpus.paths", [str(Path(raw["corpus"]["paths"][0]).parent / "state_union")]),
             ("teacher.model", "offline:minilm-l6"), ("search.fix_last", False), ("tasks.margin", 0.05)]
    for readout in ("finetune", "agreement"):
        base = with_evidence({**raw, "tasks": {**raw["tasks"], "readout": readout}})
        key0 = spec_key(parse_config(base))
        flat = {k: v for k, v in flatten(base).items() if k.split(".")[0] in
                ("teacher", "student", "objective", "corpus", "proxy", "tasks") and not k.startswith("proxy.evidence")}
        trials = [(k, _perturbed(v)) for k, v in flat.items() if _perturbed(v) is not None] + named
        spec_changes = 0
        for key, value in trials:
            try:
                cfg = parse_config(apply_overrides(copy.deepcopy(base), [f"{key}={json.dumps(value)}"]))
            except ConfigError:
                continue
            another = spec_key(cfg) != key0 or key in ("proxy.slice_seeds",)
            spec_changes += another
            assert bool(evidence_drift(cfg)) == another, (readout, key, value, evidence_drift(cfg))
        assert spec_changes >= 15, spec_changes


def test_evidence_in_the_old_form_is_refused_with_what_to_do(quickstart_raw):
    quickstart_raw["proxy"]["evidence"] = {**EVIDENCE, "measured_at": {"proxy.train.max_steps": 40}}
    with pytest.raises(ConfigError, match="measured_at .* was replaced by spec.*--evidence-spec"):
        parse_config(quickstart_raw)


def test_fidelity_evidence_says_whether_the_proxy_is_validated(quickstart_raw):
    from layersearch.fidelity import fidelity_text

    quickstart_raw["proxy"]["evidence"] = {**EVIDENCE, "spec": {}}
    good = parse_config(quickstart_raw).proxy.evidence
    assert good.validated and "agrees with final students" in fidelity_text(good)
    assert "Kendall tau +0.60 [+0.20, +0.90] against" in fidelity_text(good)
    quickstart_raw["proxy"]["evidence"].update(tau_p=0.056)  # the permutation p, beside tau
    assert "Kendall tau +0.60 [+0.20, +0.90] (permutation p 0.056) against" in fidelity_text(
        parse_config(quickstart_raw).proxy.evidence)
    quickstart_raw["proxy"]["evidence"].update(tau_ci=[-0.2, 0.9])
    assert not parse_config(quickstart_raw).proxy.evidence.validated
    quickstart_raw["proxy"]["evidence"].update(tau_ci=[0.2, 0.9], gain_ci=[-0.01, 0.05])
    weak = parse_config(quickstart_raw).proxy.evidence
    assert not weak.validated and "agrees with final students, but its students score no better than their " \
        "untouched init" in fidelity_text(weak)
    assert "not measured" in fidelity_text(None)
    quickstart_raw["proxy"]["evidence"].update(tau=None, tau_ci=None)
    pending = parse_config(quickstart_raw).proxy.evidence
    assert not pending.validated and "not measured yet" in fidelity_text(pending)
    quickstart_raw["proxy"]["evidence"].update(tau=0.3)
    with pytest.raises(ConfigError, match="tau and tau_ci together"):
        parse_config(quickstart_raw)
    quickstart_raw["proxy"]["evidence"].update(tau=None)
    # What the ladder said changes no unit of evidence.
    base = dict(quickstart_raw, proxy={k: v for k, v in quickstart_raw["proxy"].items() if k != "evidence"})
    assert spec_key(parse_config(base)) == spec_key(parse_config(quickstart_raw))


def test_validate_says_the_evidence_does_not_apply_even_to_an_invalid_config(quickstart_raw, write_config):
    """Issue 35's three settings: each gets the note; the one copy init cannot build still exits 2."""
    from typer.testing import CliRunner

    from layersearch.cli import app

    path = write_config(with_evidence(quickstart_raw))
    state_union = str(Path(quickstart_raw["corpus"]["paths"][0]).parent / "state_union")
    runner = CliRunner()
    for sets, code in ((["student.hidden_size=192", "student.intermediate_size=768"], 2),
                       ([f"corpus.paths=[{state_union}]"], 0), (["student.init.method=etd-rand"], 0)):
        result = runner.invoke(app, ["validate", str(path), *[a for s in sets for a in ("--set", s)]])
        assert result.exit_code == code, result.output
        assert "not measured" in result.stdout, (sets, result.stdout[-500:])
        if code:
            assert len([x for x in result.stderr.splitlines() if x.strip()]) == 1  # the one problem
    assert "not measured" not in runner.invoke(app, ["validate", str(path)]).stdout
