"""Distillation gain (after minus the untouched init, paired) and the keys of the new records."""

from __future__ import annotations

import numpy as np
import pytest

from layersearch.config import ConfigError, parse_config
from layersearch.fitness import Evaluation, PairingError, init_spec_key, spec_key, summarize
from layersearch.fitness.aggregate import distillation_gain, gain_word
from layersearch.fitness.record import pack_labels, unit_key
from layersearch.fitness.spec import final_init_spec_key, final_spec_key, final_student_key
from layersearch.fitness.stats import Estimate

N = 400


def record(p_right: float, seeds=(0, 1, 2), spec: str = "s", genes=(2, 4, 6), rng_seed: int = 0,
           labels: np.ndarray | None = None) -> Evaluation:
    """Units whose predictions are right with probability ``p_right`` (each seed its own draw)."""
    rng = np.random.default_rng(rng_seed)
    y = np.arange(N) % 2 if labels is None else labels
    ev = Evaluation(list(genes), 6, spec, dev_labels={"sst2": pack_labels(y)}, majority={"sst2": 0.5})
    for f in seeds:
        right = rng.random(N) < p_right
        ev.units[unit_key(0, f)] = {"slice_seed": 0, "finetune_seed": f, "distill_s": 1.0,
                                    "tasks": {"sst2": {"predictions": pack_labels(np.where(right, y, 1 - y)),
                                                       "metrics": {}, "seconds": 1.0, "steps": 1}}}
    return summarize(ev, ["sst2"])


def test_gain_is_the_paired_difference_and_its_word_follows_the_interval():
    init = record(0.6, spec="init", rng_seed=1)
    better = record(0.8, rng_seed=2)
    g = distillation_gain(better, init, ["sst2"])
    assert g.mean == pytest.approx(better.fitness - init.fitness, abs=1e-9)
    assert g.low > 0 and gain_word(g) == "positive"
    assert gain_word(distillation_gain(init, better, ["sst2"])) == "negative"
    # The same students: no gain, and the word says so.
    same = record(0.6, spec="s", rng_seed=1)
    g0 = distillation_gain(same, init, ["sst2"])
    assert g0.mean == 0 and gain_word(g0) == "none"


def test_gain_word_thresholds():
    def est(low, high):
        return Estimate((low + high) / 2, low, high, 3, 0.1, 0.1, 2.0, 0.5)

    assert gain_word(est(0.001, 0.1)) == "positive"
    assert gain_word(est(-0.001, 0.1)) == "none"
    assert gain_word(est(-0.1, -0.001)) == "negative"


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


def test_fidelity_evidence_applies_only_to_the_proxy_it_measured(quickstart_raw):
    from layersearch.fidelity import config_fidelity_text, fidelity_tag

    quickstart_raw["proxy"]["evidence"] = {
        "tau": 0.6, "tau_ci": [0.2, 0.9], "gain": 0.03, "gain_ci": [0.01, 0.05], "source": "bench/ladder.py",
        # YAML reads 3e-4 as a string: still the same learning rate as the config's 3.0e-4.
        "measured_at": {"proxy.train.max_steps": 40, "proxy.train.learning_rate": "3e-4",
                        "objective.terms": {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0}}}
    cfg = parse_config(quickstart_raw)
    assert cfg.evidence_drift() == [] and fidelity_tag(cfg) == "validated"
    assert "Kendall tau +0.60" in config_fidelity_text(cfg)
    quickstart_raw["proxy"]["train"]["max_steps"] = 1
    quickstart_raw["objective"]["terms"]["logit_kd"] = 1.0
    cfg = parse_config(quickstart_raw)
    assert cfg.evidence is None and fidelity_tag(cfg) == "unmeasured"
    assert [d.split(":")[0] for d in cfg.evidence_drift()] == ["proxy.train.max_steps", "objective.terms"]
    text = config_fidelity_text(cfg)
    assert "measured at 40, this run 1" in text and "not measured" in text and "Kendall" not in text
    quickstart_raw["proxy"]["evidence"]["measured_at"] = {"proxy.train.max_step": 40}
    with pytest.raises(ConfigError, match="proxy.train.max_step is not a config key"):
        parse_config(quickstart_raw)


def test_fidelity_evidence_says_whether_the_proxy_is_validated(quickstart_raw):
    from layersearch.fidelity import fidelity_text

    quickstart_raw["proxy"]["evidence"] = {"tau": 0.6, "tau_ci": [0.2, 0.9], "gain": 0.03,
                                           "gain_ci": [0.01, 0.05], "source": "bench/ladder.py"}
    good = parse_config(quickstart_raw).proxy.evidence
    assert good.validated and "agrees with final students" in fidelity_text(good)
    assert "Kendall tau +0.60 [+0.20, +0.90]" in fidelity_text(good)
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
