"""The search's checkpoint: ``ga_state.json`` on the parent run, and the checks a resume makes.

Each generation the driver saves the strategy's state with what fixes its
fitness values (the proxy spec, the search settings, the units); a resume
refuses any doubt about them. Silently starting at generation 0 would throw
the search's progress away and, with changed settings, mix two searches in
one run. The checks themselves (``check_resumable``) are plain data in,
an error out: they need no MLflow.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from layersearch.config import Config
from layersearch.errors import UserError
from layersearch.search.state import GAState

CHECKPOINT = "ga_state.json"
CHECKPOINT_FORMAT = 3
# search.* settings a resumed search may change: they do not steer the GA.
# (A higher generations or budget extends a finished search.)
RESUMABLE_CHANGES = ("cache_dir", "generations", "budget")


class ResumeError(UserError):
    pass


def search_settings(cfg: Config) -> dict:
    """The search.* settings a resume must not change."""
    return {k: v for k, v in cfg.search.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}


def checkpoint_data(cfg: Config, spec: str, strategy: str, units, state: GAState, populations: list) -> dict:
    """What ``ga_state.json`` holds; ``populations`` are every generation's genomes (for the plots)."""
    # The resolved strategy too: auto decides from generations and budget, which a resume may raise.
    return {"format": CHECKPOINT_FORMAT, "spec_key": spec, "search": search_settings(cfg),
            "strategy": strategy, "units": [list(u) for u in units], "ga": state.to_dict(),
            "populations": populations}


def save(tracker, run_id: str, data: dict) -> None:
    tracker.log_text(run_id, json.dumps(data), CHECKPOINT)


def require_run(tracker, run_id: str, uri: str) -> None:
    """A resume names a run the tracking store holds."""
    try:
        tracker.client.get_run(run_id)
    except Exception:
        raise ResumeError(f"--resume: no run {run_id} in {uri}") from None


def load(tracker, run_id: str, cfg: Config, spec: str, units) -> tuple[GAState, list, str | None]:
    """The GA state, populations and resolved strategy saved by the search being resumed;
    any doubt about them is a ResumeError."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(run_id, CHECKPOINT, tmp)
        except Exception:
            raise ResumeError(f"--resume {run_id}: the run has no {CHECKPOINT}; is it a search run? "
                              "Start a new search instead") from None
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format {data.get('format')}, this version reads {CHECKPOINT_FORMAT}")
            state, populations = GAState.from_dict(data["ga"]), data["populations"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"--resume {run_id}: its {CHECKPOINT} cannot be read ({exc}); "
                              "start a new search") from None
    check_resumable(data, run_id, cfg, spec, units)
    return state, populations, data.get("strategy")


def check_resumable(data: dict, run_id: str, cfg: Config, spec: str, units) -> None:
    """Refuse to resume a checkpoint taken under another proxy spec, other search settings or other units."""
    if data.get("spec_key") != spec:
        raise ResumeError(
            f"--resume {run_id}: the proxy spec changed since that search started "
            f"({data.get('spec_key')} -> {spec}); resume with the same config"
        )
    now = search_settings(cfg)
    changed = sorted(k for k in set(now) | set(data["search"]) if now.get(k) != data["search"].get(k))
    if changed:
        was = ", ".join(f"search.{k}: {data['search'].get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ResumeError(f"--resume {run_id}: search settings changed since it started ({was}); "
                          "resume with the same settings or start a new search")
    if data.get("units") != [list(u) for u in units]:
        # Fitnesses from other seeds would be ranked against these as if alike.
        raise ResumeError(f"--resume {run_id}: proxy.slice_seeds or tasks.finetune.seeds changed since "
                          "it started; resume with the same seeds or start a new search")
