"""The corpus's token blocks read straight from datasets' memory-mapped cache.

``get_slice`` turns its blocks into one in-memory tensor, which is right for a
proxy slice of a few hundred blocks and wrong for a full distillation over a
Wikipedia-size corpus. A ``BlockSource`` looks like that tensor to the trainer
(``ndim``, ``shape``, ``len``, indexing by a row tensor or a slice) but reads
each batch's rows from the Arrow files that ``datasets.map`` cached, so memory
stays flat however large the corpus is. A subset is a small array of row
numbers over the table, drawn exactly as ``get_slice`` draws it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset

from layersearch.config import CorpusConfig
from layersearch.data.corpus import CorpusError, load_blocks
from layersearch.data.slices import slice_key, slice_rows


class BlockSource:
    """Blocks [n, seq_length] of a tokenized corpus, read on demand as int64 tensors."""

    def __init__(self, blocks: Dataset, seq_length: int, index: np.ndarray | None, key: str):
        self._blocks = blocks
        self._index = index  # rows of the table, sorted; None = all rows in order
        self._views: tuple[np.ndarray, list[np.ndarray]] | None = None
        self.seq_length = seq_length
        self.key = key  # slice_key of (corpus, tokenizer, seq_length, size, seed)
        self.corpus_blocks = len(blocks)

    @property
    def fingerprint(self) -> str:
        """Names exactly these blocks: log it, and check it on resume."""
        return self.key

    @property
    def ndim(self) -> int:
        return 2

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.seq_length))

    @property
    def tokens(self) -> int:
        return len(self) * self.seq_length

    @property
    def cache_files(self) -> list[str]:
        """The memory-mapped Arrow files behind the blocks (empty if they live in memory)."""
        return [f["filename"] for f in self._blocks.cache_files]

    def __len__(self) -> int:
        return self.corpus_blocks if self._index is None else len(self._index)

    def __getitem__(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """Rows in the order asked (repeats allowed) as an int64 tensor [k, seq_length]."""
        if isinstance(rows, slice):
            wanted = np.arange(len(self))[rows]
        elif isinstance(rows, torch.Tensor) and rows.ndim == 1 and not rows.is_floating_point():
            wanted = rows.cpu().numpy().astype(np.int64, copy=False)
        else:
            raise TypeError("BlockSource rows must be a slice or a 1-D integer tensor")
        n = len(self)
        if wanted.size and (wanted.min() < -n or wanted.max() >= n):
            raise IndexError(f"block index out of range for {n} blocks")
        wanted = wanted % n  # negative rows count from the end, as in a tensor
        table_rows = wanted if self._index is None else self._index[wanted]
        if self._blocks._indices is not None:  # a datasets select/shuffle view: map to its table
            table_rows = self._blocks._indices.column(0).take(pa.array(table_rows)).to_numpy()
        starts, views = self._chunk_views()
        chunk = np.searchsorted(starts, table_rows, side="right") - 1
        out = np.empty((len(table_rows), self.seq_length), dtype=np.int64)
        order = np.argsort(chunk, kind="stable")
        # One fancy index per chunk touched: only the pages of the rows asked are read.
        for group in np.split(order, np.flatnonzero(np.diff(chunk[order])) + 1):
            if group.size:
                c = chunk[group[0]]
                out[group] = views[c][table_rows[group] - starts[c]]
        return torch.from_numpy(out)

    def _chunk_views(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Each Arrow chunk as a zero-copy [rows, seq_length] view of the mapped file.

        Arrow's own ``take`` on a chunked list column concatenates every chunk
        first (a copy of the corpus per batch), so rows are gathered here.
        """
        if self._views is None:
            starts, views, at = [], [], 0
            for part in self._blocks.data.table.column("input_ids").chunks:
                flat = part.flatten().to_numpy(zero_copy_only=True)  # honours the chunk's offset
                if flat.size != len(part) * self.seq_length:
                    raise CorpusError(f"corpus cache holds blocks not of {self.seq_length} tokens; "
                                      "delete the datasets cache of this corpus and prepare it again")
                if len(part):
                    starts.append(at)
                    views.append(flat.reshape(len(part), self.seq_length))
                at += len(part)
            self._views = (np.asarray(starts, dtype=np.int64), views)
        return self._views

    def __getstate__(self) -> dict:
        # Views of a memory map would pickle as copies of the corpus; rebuild them after.
        return {**self.__dict__, "_views": None}

    def __repr__(self) -> str:
        return f"BlockSource({len(self)} x {self.seq_length} of {self.corpus_blocks} blocks, key={self.key})"


def open_blocks(cfg: CorpusConfig, tokenizer, size: int | None, seed: int) -> BlockSource:
    """The blocks ``get_slice(cfg, tokenizer, size, seed)`` holds, without loading them.

    ``size=None`` is the whole corpus in order; a number is the same seeded subset.
    Tokenizes on first use (cached by ``datasets``), like ``get_slice``.
    """
    blocks = load_blocks(cfg, tokenizer)
    n = len(blocks)
    index = None if size is None else slice_rows(n, size, seed, cfg.seq_length)
    return BlockSource(blocks, cfg.seq_length, index, slice_key(cfg, tokenizer, size, seed))
