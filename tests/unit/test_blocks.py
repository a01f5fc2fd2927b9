"""BlockSource: the corpus read from datasets' memory-mapped cache, equal to get_slice."""

from __future__ import annotations

import pickle
from pathlib import Path

import datasets
import pytest
import torch

from layersearch.config import CorpusConfig
from layersearch.data.blocks import open_blocks
from layersearch.data.corpus import CorpusError, load_blocks
from layersearch.data.slices import get_slice
from layersearch.distill import micro_batch
from layersearch.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("offline:minilm-l6")


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A private datasets cache, so each test tokenizes afresh and leaves nothing behind."""
    path = tmp_path / "hf"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", path)
    return path


def _utf8(path: Path) -> bool:
    try:
        path.read_text(encoding="utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _cfg(shared_data, tmp_path, **kw) -> CorpusConfig:
    # The inaugural addresses, less the one file that is not UTF-8 (the text loader's encoding).
    files = [str(f) for f in sorted((shared_data / "corpus" / "inaugural").iterdir()) if _utf8(f)]
    return CorpusConfig(paths=files, seq_length=64, cache_dir=str(tmp_path / "slices"), **kw)


def test_whole_corpus_equals_get_slice_and_is_memory_mapped(shared_data, tmp_path, hf_cache, tokenizer):
    cfg = _cfg(shared_data, tmp_path, num_proc=1)
    ref = get_slice(cfg, tokenizer, None, 0)
    src = open_blocks(cfg, tokenizer, None, 0)
    assert src.ndim == 2 and src.shape == ref.input_ids.shape and len(src) == ref.corpus_blocks
    got = src[:]
    assert got.dtype == torch.int64 and torch.equal(got, ref.input_ids)
    assert src.fingerprint == ref.key
    # The blocks live in Arrow files under the datasets cache, not in this process.
    files = [Path(f) for f in src.cache_files]
    assert files and all(f.is_file() and hf_cache in f.parents for f in files)
    assert sum(f.stat().st_size for f in files) >= src.tokens * 4  # int32 ids on disk


def test_subset_equals_get_slice_for_rows_and_slices(shared_data, tmp_path, hf_cache, tokenizer):
    cfg = _cfg(shared_data, tmp_path, num_proc=1)
    ref = get_slice(cfg, tokenizer, 40, 7).input_ids
    src = open_blocks(cfg, tokenizer, 40, 7)
    assert src.shape == ref.shape and src.corpus_blocks > 40
    assert src.fingerprint == get_slice(cfg, tokenizer, 40, 7).key
    assert src.fingerprint != open_blocks(cfg, tokenizer, 40, 8).fingerprint
    assert torch.equal(src[:], ref)
    assert len(src._chunk_views()[1]) > 1  # rows are gathered across several Arrow chunks
    rows = torch.tensor([39, 0, 5, 5, 17, -1])  # any order, repeats, from the end
    assert torch.equal(src[rows], ref[rows])
    assert torch.equal(src[3:30:4], ref[3:30:4])
    assert src[torch.tensor([], dtype=torch.long)].shape == (0, 64)
    # Ray ships a source to workers by pickling: it travels as file names, and reads the same.
    shipped = pickle.loads(pickle.dumps(src))
    assert len(pickle.dumps(src)) < 10_000 and torch.equal(shipped[rows], ref[rows])
    # The trainer's micro-batches see the same data either way.
    for i in (0, 3, 11):  # 11 is in the second epoch of 10 batches of 4
        assert torch.equal(micro_batch(src, i, 4, seed=2), micro_batch(ref, i, 4, seed=2))


def test_blocks_do_not_depend_on_num_proc(shared_data, tmp_path, monkeypatch, tokenizer):
    got = {}
    for procs in (1, 2):
        cache = tmp_path / f"hf{procs}"
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
        got[procs] = load_blocks(_cfg(shared_data, tmp_path, num_proc=procs), tokenizer)["input_ids"]
        sharded = list(cache.rglob("cache-*_of_00002.arrow"))
        # Two processes really tokenized (datasets names their shards), one did not.
        assert bool(sharded) == (procs == 2)
    # More than 1000 lines, so sharding the grouping would have moved block boundaries.
    assert len(got[1]) > 100 and got[1] == got[2]


def test_errors(shared_data, tmp_path, hf_cache, tokenizer):
    cfg = _cfg(shared_data, tmp_path, num_proc=1)
    src = open_blocks(cfg, tokenizer, 10, 0)
    with pytest.raises(CorpusError, match="corpus has only"):
        open_blocks(cfg, tokenizer, src.corpus_blocks + 1, 0)
    with pytest.raises(IndexError, match="out of range for 10 blocks"):
        src[torch.tensor([10])]
    with pytest.raises(TypeError, match="slice or a 1-D integer tensor"):
        src[torch.tensor([0.0])]
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("too short for a block\n")
    short = CorpusConfig(paths=[str(tiny)], seq_length=512, cache_dir=str(tmp_path / "s"))
    with pytest.raises(CorpusError, match="no block of 512 tokens"):
        open_blocks(short, tokenizer, None, 0)
