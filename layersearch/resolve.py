"""Turn whatever the user passed as ``--mapping`` into a checked Mapping.

Heuristic names, JSON files and gene lists are handled by mapping.py; a
32-hex-digit string is read as an MLflow search run id whose
``best_mapping.json`` artifact names the winner.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from layersearch.config import Config
from layersearch.mapping import Mapping, MappingError, check_saved, load_mapping, resolve_mapping

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def mapping_from_run(run_id: str, cfg: Config) -> Mapping:
    from layersearch.tracking import Tracker

    tracker = Tracker(cfg.tracking)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(run_id, "best_mapping.json", tmp)
        except Exception as exc:
            raise MappingError(
                f"mapping: run {run_id} has no best_mapping.json in {cfg.tracking.uri} "
                f"({type(exc).__name__}); is it a finished search run?"
            ) from None
        mapping, _ = load_mapping(Path(path))
    return mapping


def resolve_any_mapping(spec: str, cfg: Config, num_teacher_layers: int) -> Mapping:
    m = cfg.student.num_layers
    if RUN_ID.match(spec) and not Path(spec).exists():
        return check_saved(mapping_from_run(spec, cfg), f"run {spec} searched", m, num_teacher_layers)
    return resolve_mapping(spec, m, num_teacher_layers)
