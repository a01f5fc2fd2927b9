"""Seeded proxy-corpus slices, built once and cached on disk.

A slice is N blocks drawn without replacement from the tokenized corpus with
a seeded generator. Its key hashes everything that decides its content
(corpus identity, tokenizer, block length, size, seed), so the same key always
names the same blocks and the proxy spec can cite it. Slices are stored as
safetensors plus a JSON manifest and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from layersearch.config import CorpusConfig
from layersearch.data.corpus import CorpusError, corpus_files, load_blocks
from layersearch.digest import file_digest

SLICE_FORMAT = 1


@dataclass
class Slice:
    key: str
    path: Path
    input_ids: torch.Tensor  # [blocks, seq_length], int64
    corpus_blocks: int  # size of the corpus it was drawn from
    cached: bool  # True when read from disk rather than built now

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())


def corpus_identity(cfg: CorpusConfig) -> dict:
    """What names the corpus: hub coordinates, or each file's name, size and content digest.

    Not its path or mtime: a copy of the same files on another machine or in
    another folder names the same blocks, slices and cached evaluations.
    """
    if cfg.hub is not None:
        return {"hub": cfg.hub.model_dump(), "format": cfg.format}
    files = [
        [f.name, f.stat().st_size, file_digest(f, memo_dir=cfg.cache_dir)] for f in corpus_files(cfg)
    ]
    return {"files": files, "format": cfg.format}


def tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Truncation and padding are call-time state that tokenizing changes.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def slice_key(cfg: CorpusConfig, tokenizer, size: int | None, seed: int, reserve: int = 0) -> str:
    ident = {
        "corpus": corpus_identity(cfg),
        "tokenizer": tokenizer_identity(tokenizer),
        "seq_length": cfg.seq_length,
        "size": size,
        "seed": seed,
        "format": SLICE_FORMAT,
    }
    if reserve:  # only then, so the slices cached before held-out blocks existed keep their keys
        ident["reserve"] = reserve
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def slice_rows(n: int, size: int, seed: int, seq_length: int, reserve: int = 0) -> np.ndarray:
    """The sorted rows of a seeded slice of ``size`` blocks out of ``n``: one draw for
    ``get_slice`` and ``blocks.open_blocks``, so both name the same blocks. The last
    ``reserve`` blocks are held out (``heldout_rows``): no slice of any seed holds them."""
    if size + reserve > n:
        held = f" after the {reserve} held-out blocks" if reserve else ""
        raise CorpusError(
            f"slice of {size} blocks requested but the corpus has only {n - reserve} blocks of "
            f"{seq_length} tokens{held}; lower the slice size or add text"
        )
    return np.sort(np.random.default_rng(seed).choice(n - reserve, size=size, replace=False))


def heldout_rows(n: int, reserve: int, seq_length: int) -> np.ndarray:
    """The corpus's last ``reserve`` blocks: text the agreement readout tests on."""
    if reserve >= n:
        raise CorpusError(f"{reserve} held-out blocks requested but the corpus has only {n} blocks of "
                          f"{seq_length} tokens; lower tasks.agreement.heldout_blocks or add text")
    return np.arange(n - reserve, n)


def get_heldout(cfg: CorpusConfig, tokenizer, reserve: int) -> torch.Tensor:
    """[reserve, seq_length] token ids of the held-out blocks."""
    blocks = load_blocks(cfg, tokenizer)
    rows = heldout_rows(len(blocks), reserve, cfg.seq_length)
    return torch.tensor(blocks.select(rows)["input_ids"], dtype=torch.long)


def _read(path: Path, key: str) -> Slice:
    meta = json.loads((path / "slice.json").read_text())
    ids = load_file(str(path / "input_ids.safetensors"))["input_ids"].long()
    return Slice(key, path, ids, meta["corpus_blocks"], cached=True)


def get_slice(cfg: CorpusConfig, tokenizer, size: int | None, seed: int, reserve: int = 0) -> Slice:
    """The slice of ``size`` blocks for ``seed`` (``size=None``: the whole corpus, in order),
    never one of the last ``reserve`` blocks."""
    key = slice_key(cfg, tokenizer, size, seed, reserve)
    root = Path(cfg.cache_dir).expanduser()
    path = root / key
    if (path / "slice.json").is_file():
        return _read(path, key)
    blocks = load_blocks(cfg, tokenizer)
    n = len(blocks)
    index = np.arange(n - reserve) if size is None else slice_rows(n, size, seed, cfg.seq_length, reserve)
    ids = torch.tensor(blocks.select(index)["input_ids"], dtype=torch.int32)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
    try:
        save_file({"input_ids": ids.contiguous()}, str(tmp / "input_ids.safetensors"))
        meta = {"key": key, "blocks": len(index), "seq_length": cfg.seq_length, "seed": seed,
                "corpus_blocks": n, "corpus": corpus_identity(cfg)}
        (tmp / "slice.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, path)  # atomic: readers see a whole slice or none
        except OSError:
            if not (path / "slice.json").is_file():  # lost a race to a twin builder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Slice(key, path, ids.long(), n, cached=False)
