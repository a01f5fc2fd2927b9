"""The layer-mapping search: ``search`` runs it, ``export_best`` writes its winner as a mapping file.

Every evaluation is a nested MLflow run under the search's run; the winner,
its interval and its verdict against uniform come back as a
``search.driver.SearchResult``. ``on_event(kind, progress, info)`` receives
the driver's events (start, rung, started, done, cached, generation, final,
warning, retry, waiting) for a live display; the command line's is
``cli.common.SearchDisplay``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from layersearch.config import Config
from layersearch.errors import UserError


def search(cfg: Config, resume: str | None = None, export_to: Path | str | None = None,
           on_event: Callable | None = None):
    """Search layer mappings; ``resume`` continues a search run id; ``export_to`` also writes
    the best mapping's JSON file there. Returns a ``search.driver.SearchResult``."""
    from layersearch.search.driver import SearchDriver

    result = SearchDriver(cfg, on_event=on_event).run(resume_run_id=resume)
    if export_to is not None and result.best is not None:
        from layersearch.tracking import Tracker

        # The file the search logged (winner, its init, interval, verdict): one source for both exports.
        export_best(Tracker(cfg.tracking), result.run_id, Path(export_to))
    return result


def export_best(tracker, run_id: str, output: Path):
    """Write search ``run_id``'s best_mapping.json to ``output``; returns the mapping."""
    import shutil
    import tempfile

    from layersearch.mapping import load_mapping

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(run_id, "best_mapping.json", tmp)
        except Exception:
            raise UserError(f"run {run_id} has no best_mapping.json; has the search finished?") from None
        mapping, record = load_mapping(path)  # validate before handing it on
        output.parent.mkdir(parents=True, exist_ok=True)
        if record.get("search_run_id"):
            shutil.copyfile(path, output)
        else:
            # Written before searches named themselves in the file: add it, so that a
            # distillation from this file is traced back to its search (lineage tags, show).
            output.write_text(json.dumps({**record, "search_run_id": run_id}, indent=2) + "\n")
    return mapping
