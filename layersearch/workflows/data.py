"""Data preparation: tokenize the corpus and build (or find) each proxy slice."""

from __future__ import annotations

from layersearch.config import Config
from layersearch.workflows.results import PreparedSlice


def prepare(cfg: Config) -> list[PreparedSlice]:
    """Each of ``proxy.slice_seeds``'s corpus slices, built now or found in ``corpus.cache_dir``."""
    from layersearch.data.slices import get_slice
    from layersearch.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
    out = []
    for seed in cfg.proxy.slice_seeds:
        sl = get_slice(cfg.corpus, tokenizer, cfg.proxy.slice_blocks, seed)
        out.append(PreparedSlice(seed, sl.key, sl.cached, int(sl.input_ids.shape[0]), sl.corpus_blocks, sl.tokens,
                                 sl.path.resolve()))
    return out
