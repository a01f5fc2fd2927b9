"""Content digests of input files, the identity that cache keys cite.

A key must follow what a file holds, not where or when it was copied: the
same corpus copied to a new machine (new paths, new mtimes) must find the
evaluations cached for it, and an edited file must not. So files are named by
a hash of their bytes. Reading a large corpus once per process would cost
seconds to minutes, so the hash is remembered by (path, size, mtime): within
the process, and on disk in a memo folder when one is given (a copy gets a new
mtime, is read once more, and lands on the same digest).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

MEMO_FILE = "digests.json"


@functools.lru_cache(maxsize=256)
def _hash(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _read_memo(folder: Path) -> dict:
    try:
        data = json.loads((folder / MEMO_FILE).read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: a memo only saves time, so start it again
    return data if isinstance(data, dict) else {}


def _write_memo(folder: Path, memo: dict) -> None:
    # Atomic replace: processes that race each lose at most their own new entries.
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".digests-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f, sort_keys=True)
        os.replace(tmp, folder / MEMO_FILE)
    except OSError:
        pass  # a read-only cache folder: digests are recomputed next time


def file_digest(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 (16 hex) of a file's bytes, remembered by its (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    if memo_dir is None:
        return _hash(str(p), st.st_size, st.st_mtime_ns)
    folder = Path(memo_dir).expanduser()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    memo = _read_memo(folder)
    entry = memo.get(str(p))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = _hash(str(p), st.st_size, st.st_mtime_ns)
    memo = _read_memo(folder)  # again: another process may have added entries meanwhile
    memo[str(p)] = {"stamp": stamp, "sha256": digest}
    _write_memo(folder, memo)
    return digest
