"""Content-keyed entries of named arrays on disk: one writer, atomic, verified, memory-mapped.

An entry is a folder ``<root>/<key>/`` of raw ``.npy`` files and a
``manifest.json`` that gives each file's size and sha256. The key names the
content (the caller hashes whatever decides it), so an entry, once whole,
never changes; any process on any node that shares ``root`` may read it.

- One writer: a builder holds ``fcntl.flock`` on ``<root>/.<key>.lock``, so two
  processes that need the same missing entry build it once; the second waits
  and then reads it.
- Atomic: files are written into a temporary folder, fsynced, and the folder
  renamed into place; a reader sees a whole entry or none.
- Verified: an entry's sizes are checked on every open, its checksums once
  per process; a truncated or corrupt entry is set aside and rebuilt, never read.
- A full disk ends the build with one ``ArrayStoreError`` line and removes the
  temporary folder.

bf16 has no numpy dtype: it is stored as uint16 and the manifest says bf16.
Nothing is pickled: ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layersearch.durable import fsync_path
from layersearch.errors import UserError

MANIFEST = "manifest.json"
# torch dtype name -> (numpy dtype it is stored as, bytes per element)
DTYPES = {"float32": np.float32, "bfloat16": np.uint16, "float16": np.float16, "int64": np.int64}

_verified: set[tuple] = set()  # entries' file stamps whose checksums this process has checked


class ArrayStoreError(UserError):
    """An entry could not be written (a full disk, a folder that cannot be written)."""


@dataclass
class Entry:
    path: Path
    arrays: dict[str, np.ndarray]  # read-only memory maps
    dtypes: dict[str, str]  # torch dtype names
    meta: dict
    built: bool  # True when this call wrote it

    def tensor(self, name: str, rows=None) -> torch.Tensor:
        """Array ``name`` (or its ``rows``) as a tensor of its stored torch dtype; a copy, not a map."""
        a = self.arrays[name]
        a = np.array(a if rows is None else a[rows])  # fancy indexing reads only those rows
        if self.dtypes[name] == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    @property
    def nbytes(self) -> int:
        return sum(f["size"] for f in self.meta["files"].values())


class Writer:
    """Given to the build function: ``add(name, shape, dtype)`` opens one array, filled in row order."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[str, dict] = {}

    def add(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> _ArrayFile:
        dname = str(dtype).removeprefix("torch.")
        if dname not in DTYPES:
            raise ValueError(f"cannot store dtype {dname}")
        f = _ArrayFile(self.folder / f"{name}.npy", tuple(shape), dname)
        self.files[name] = {"file": f.path.name, "shape": list(shape), "dtype": dname, "_f": f}
        return f


class _ArrayFile:
    """One .npy file written sequentially (no memory map: a write to a map on a full disk is a
    SIGBUS, a write() an OSError), hashed as it goes."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: str):
        self.path, self.shape, self.dtype = path, shape, dtype
        self.sha = hashlib.sha256()
        self.size = 0
        self.fh = open(path, "wb")  # noqa: SIM115 (closed by close())
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(DTYPES[dtype])), "fortran_order": False,
                  "shape": shape}
        import io

        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        head = buf.getvalue()
        self.expected = len(head) + int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize
        _reserve(self.fh, self.expected)  # fail at once on a disk without room, before any compute
        self._write(head)

    def write(self, t: torch.Tensor) -> None:
        """The next rows, in order."""
        t = t.detach().contiguous().cpu()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        self._write(t.numpy().tobytes())

    def _write(self, data: bytes) -> None:
        write_bytes(self.fh, data)
        self.sha.update(data)
        self.size += len(data)

    def close(self) -> dict:
        if self.size != self.expected:
            raise RuntimeError(f"{self.path.name}: wrote {self.size} bytes, expected {self.expected}")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return {"size": self.size, "sha256": self.sha.hexdigest()}


def write_bytes(fh, data: bytes) -> None:
    """One write (a seam: tests make it raise ENOSPC to simulate a full disk)."""
    fh.write(data)


def _reserve(fh, nbytes: int) -> None:
    try:
        os.posix_fallocate(fh.fileno(), 0, nbytes)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
            return  # a file system without preallocation: the writes themselves will say
        raise


@contextmanager
def _locked(root: Path, key: str) -> Iterator[None]:
    with open(root / f".{key}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def damage(path: Path) -> str | None:
    """Why the entry at ``path`` cannot be read (missing manifest, a file's size or checksum), or None."""
    manifest = path / MANIFEST
    try:
        meta = json.loads(manifest.read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({type(exc).__name__})"
    for f in files.values():
        p = path / f["file"]
        size = p.stat().st_size if p.is_file() else None
        if size != f["size"]:
            return f"{f['file']} has {size} bytes, the manifest says {f['size']}"
    # Any rewrite of any file changes its stamp, so a damaged file is checked again.
    stamp = tuple((str(p), st.st_size, st.st_mtime_ns, st.st_ino)
                  for p in [manifest, *(path / f["file"] for f in files.values())] for st in [p.stat()])
    if stamp not in _verified:
        for f in files.values():
            if _sha256(path / f["file"]) != f["sha256"]:
                return f"{f['file']} does not match its sha256"
        _verified.add(stamp)
    return None


def _open(path: Path, built: bool) -> Entry:
    meta = json.loads((path / MANIFEST).read_text())
    arrays = {n: np.load(path / f["file"], mmap_mode="r", allow_pickle=False) for n, f in meta["files"].items()}
    dtypes = {n: f["dtype"] for n, f in meta["files"].items()}
    return Entry(path, arrays, dtypes, meta, built)


def _set_aside(path: Path, why: str) -> None:
    print(f"{path} is damaged ({why}); rebuilding it", file=sys.stderr, flush=True)
    trash = path.with_name(f".{path.name}-damaged-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def open_entry(root: str | Path, key: str, build: Callable[[Writer], dict], what: str = "entry",
               fix: str = "") -> Entry:
    """The whole, verified entry ``key`` under ``root``: read if present, else built once by
    ``build(writer)`` (which returns extra manifest fields) under the entry's lock.

    ``what`` names the entry and ``fix`` the way out in the one-line error of a full disk.
    """
    root = Path(root).expanduser()
    path = root / key
    if path.is_dir() and damage(path) is None:
        return _open(path, built=False)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, key):
        if path.is_dir():  # a twin finished while this one waited, or the entry is damaged
            why = damage(path)
            if why is None:
                return _open(path, built=False)
            _set_aside(path, why)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
        try:
            writer = Writer(tmp)
            try:
                extra = build(writer)
                files = {n: {"file": f["file"], "shape": f["shape"], "dtype": f["dtype"], **f["_f"].close()}
                         for n, f in writer.files.items()}
            finally:
                for f in writer.files.values():
                    if not f["_f"].fh.closed:
                        f["_f"].fh.close()
            (tmp / MANIFEST).write_text(json.dumps({"key": key, **(extra or {}), "files": files}, indent=1))
            with open(tmp / MANIFEST, "rb") as fh:
                os.fsync(fh.fileno())
            fsync_path(tmp)
            os.rename(tmp, path)  # atomic: readers see a whole entry or none
            fsync_path(root)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                need = sum(int(np.prod(f["shape"])) * np.dtype(DTYPES[f["dtype"]]).itemsize
                           for f in writer.files.values()) if "writer" in locals() else 0
                free = shutil.disk_usage(root).free
                raise ArrayStoreError(
                    f"disk full writing {what} to {root} ({need / 2**20:.0f} MB asked so far, "
                    f"{free / 2**20:.0f} MB free); nothing was kept. {fix}".strip()) from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _open(path, built=True)
