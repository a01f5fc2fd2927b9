"""The evaluation cache: one JSON file per (proxy spec, mapping), written atomically.

Keyed by the proxy spec's hash, so searches (and `layersearch evaluate`) that
share a spec share results, and a restarted search finds everything it had
finished. JSON, not pickle: cache files are data anyone may hand around.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from layersearch.fitness import Evaluation
from layersearch.mapping import Mapping


class EvaluationCache:
    def __init__(self, root: str | Path, spec_key: str):
        self.dir = Path(root).expanduser() / spec_key
        self.spec_key = spec_key

    def _path(self, mapping: Mapping) -> Path:
        return self.dir / f"{mapping.key.replace(':', '_')}.json"

    def get(self, mapping: Mapping) -> Evaluation | None:
        path = self._path(mapping)
        if not path.is_file():
            return None
        try:
            ev = Evaluation.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError):
            return None  # a damaged entry is re-evaluated, not trusted
        return ev if ev.spec_key == self.spec_key and ev.genes == list(mapping.genes) else None

    def put(self, ev: Evaluation) -> bool:
        """Store a finished evaluation; transient failures are not stored."""
        if not ev.cacheable:
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(ev.mapping)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(ev.to_dict(), f)
        os.replace(tmp, path)
        return True

    def __len__(self) -> int:
        return len(list(self.dir.glob("*.json"))) if self.dir.is_dir() else 0
