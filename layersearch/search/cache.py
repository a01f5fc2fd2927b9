"""The evaluation cache: one JSON file per (proxy spec, mapping), written atomically.

Keyed by the proxy spec's hash, so searches (and `layersearch evaluate`) that
share a spec share results, and a restarted search finds everything it had
finished. What it keeps is the units (one proxy slice x one fine-tune seed
each): a later request for more seeds reads the units it has and runs only
the rest, and ``put`` merges new units into the file instead of replacing it.
JSON, not pickle: cache files are data anyone may hand around.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from layersearch.fitness import Evaluation, summarize, unit_key
from layersearch.mapping import Mapping


class EvaluationCache:
    def __init__(self, root: str | Path, spec_key: str):
        self.dir = Path(root).expanduser() / spec_key
        self.spec_key = spec_key

    def _path(self, mapping: Mapping) -> Path:
        return self.dir / f"{mapping.key.replace(':', '_')}.json"

    def get(self, mapping: Mapping) -> Evaluation | None:
        """Everything stored for ``mapping``, every unit included (see ``lookup``)."""
        path = self._path(mapping)
        if not path.is_file():
            return None
        try:
            ev = Evaluation.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError):
            return None  # a damaged entry is re-evaluated, not trusted
        return ev if ev.spec_key == self.spec_key and ev.genes == list(mapping.genes) else None

    def lookup(self, mapping: Mapping, units: list[tuple[int, int]], tasks: list[str],
               weights: list[float] | None = None) -> tuple[Evaluation | None, Evaluation | None]:
        """(complete, partial): the evaluation over exactly ``units`` if all are stored,
        else the stored record to extend (or None)."""
        stored = self.get(mapping)
        if stored is None:
            return None, None
        if not stored.ok:
            return stored, None  # a stored failure is deterministic (only those are cached): final
        wanted = [unit_key(s, f) for s, f in units]
        if stored.missing(wanted):
            return None, stored
        return summarize(stored.restricted(wanted), tasks, weights), None

    def put(self, ev: Evaluation) -> bool:
        """Store a finished evaluation, merged with the units already stored.

        Transient failures are not stored, nor is any failure over good stored
        units. The stored summary describes the last evaluation's units only;
        ``lookup`` derives it again for the units asked.
        """
        if not ev.cacheable:
            return False
        stored = self.get(ev.mapping)
        if stored is not None and stored.ok and stored.units:
            if not ev.ok:  # a failed extension must not erase the units already proven
                return False
            ev = Evaluation.from_dict(ev.to_dict())
            ev.units = {**stored.units, **ev.units}
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(ev.mapping)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(ev.to_dict(), f)
        os.replace(tmp, path)
        return True

    def __len__(self) -> int:
        return len(list(self.dir.glob("*.json"))) if self.dir.is_dir() else 0
