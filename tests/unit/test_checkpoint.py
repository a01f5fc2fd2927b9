"""The search checkpoint's content and the checks a resume makes, without MLflow."""

from __future__ import annotations

import json

import pytest

from layersearch.config import parse_config
from layersearch.search.checkpoint import (
    CHECKPOINT_FORMAT,
    ResumeError,
    check_resumable,
    checkpoint_data,
    search_settings,
)
from layersearch.search.ga import GAState, GeneticSearch

UNITS = [(0, 0), (0, 1)]


@pytest.fixture
def saved(quickstart_raw):
    cfg = parse_config(quickstart_raw)
    state = GeneticSearch(cfg.search, 3, 6, strategy="ga").start()
    data = json.loads(json.dumps(checkpoint_data(cfg, "spec-a", "ga", UNITS, state, [[[2, 4, 6]]])))
    return quickstart_raw, cfg, state, data


def test_the_checkpoint_holds_what_fixes_the_search(saved):
    _, cfg, state, data = saved
    assert list(data) == ["format", "spec_key", "search", "strategy", "units", "ga", "populations"]
    assert data["format"] == CHECKPOINT_FORMAT and data["strategy"] == "ga"
    assert data["units"] == [[0, 0], [0, 1]] and data["populations"] == [[[2, 4, 6]]]
    assert GAState.from_dict(data["ga"]) == state
    # Settings that only extend a search (or move its cache) are left out: a resume may change them.
    assert not {"cache_dir", "generations", "budget"} & set(data["search"])
    assert data["search"] == search_settings(cfg)


def test_the_same_search_resumes(saved):
    raw, _, _, data = saved
    raw["search"]["generations"] = 40  # extends a finished search
    raw["search"]["cache_dir"] = "/elsewhere"
    check_resumable(data, "r1", parse_config(raw), "spec-a", UNITS)


def test_another_spec_settings_or_units_refuse_to_resume(saved):
    raw, cfg, _, data = saved
    with pytest.raises(ResumeError, match="proxy spec changed .*spec-a -> spec-b"):
        check_resumable(data, "r1", cfg, "spec-b", UNITS)
    with pytest.raises(ResumeError, match="slice_seeds or tasks.finetune.seeds changed"):
        check_resumable(data, "r1", cfg, "spec-a", UNITS[:1])
    raw["search"]["population"] = cfg.search.population + 1
    with pytest.raises(ResumeError, match=f"search.population: {cfg.search.population} -> "
                                          f"{cfg.search.population + 1}"):
        check_resumable(data, "r1", parse_config(raw), "spec-a", UNITS)
