"""Turn whatever the user passed as ``--mapping`` into a checked Mapping.

Heuristic names, JSON files and gene lists are handled by mapping.py; a
32-hex-digit string is read as an MLflow search run id whose
``best_mapping.json`` artifact names the winner. ``lineage_tags`` records on a
distill run where its mapping came from, so a search can list what it fed.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from layersearch.config import Config
from layersearch.fitness.stats import VERDICTS
from layersearch.mapping import (
    HEURISTICS,
    Mapping,
    MappingError,
    check_saved,
    load_mapping,
    parse_genes,
    resolve_mapping,
)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# MLflow tags of a distill run's lineage; `show` finds a search's distill runs by SEARCH_RUN_TAG.
MAPPING_SOURCE_TAG = "layersearch.mapping_source"
SEARCH_RUN_TAG = "layersearch.search_run"
VERDICT_TAG = "layersearch.verdict"


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


def lineage_tags(spec: str, cfg: Config) -> dict[str, str]:
    """MLflow tags saying where a distill run's mapping came from.

    ``layersearch.mapping_source`` is the ``--mapping`` spec normalised
    (``heuristic:uniform``, ``genes:2,4,6``, ``file:/abs/best.json``,
    ``search:<run id>``); ``layersearch.search_run`` the search run it came from
    and ``layersearch.verdict`` that search's verdict against uniform, where known.
    What cannot be found (an old file, an unreachable store) is left out: lineage
    never stops a distillation, and a bad spec is reported by resolve_any_mapping.
    """
    spec = spec.strip()
    if RUN_ID.match(spec) and not Path(spec).exists():
        tags = {MAPPING_SOURCE_TAG: f"search:{spec}", SEARCH_RUN_TAG: spec}
        verdict = _run_verdict(spec, cfg)
    elif spec in HEURISTICS:
        return {MAPPING_SOURCE_TAG: f"heuristic:{spec}"}
    elif spec.endswith(".json") or Path(spec).is_file():
        path = Path(spec).resolve()
        tags = {MAPPING_SOURCE_TAG: f"file:{path}"}
        try:
            _, record = load_mapping(path)
        except MappingError:
            return tags
        search_run = record.get("search_run_id")
        if isinstance(search_run, str) and RUN_ID.match(search_run):
            tags[SEARCH_RUN_TAG] = search_run
        # The file's own verdict is the one it was exported with; the run's tag, if it says one.
        verdict = record.get("verdict")
        if verdict not in VERDICTS and SEARCH_RUN_TAG in tags:
            verdict = _run_verdict(search_run, cfg)
    else:
        try:
            genes = ",".join(str(g) for g in parse_genes(spec))
        except MappingError:
            genes = spec
        return {MAPPING_SOURCE_TAG: f"genes:{genes}"}
    if verdict in VERDICTS:
        tags[VERDICT_TAG] = verdict
    return tags


def _run_verdict(run_id: str, cfg: Config) -> str | None:
    """The ``verdict`` tag of a search run, or None where the run or the store is out of reach."""
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(cfg.tracking.uri).get_run(run_id).data.tags.get("verdict")
    except Exception:  # an absent run, a server that is down: the lineage just lacks the verdict
        return None
