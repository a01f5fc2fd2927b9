"""Data preparation: tokenize the corpus, build (or find) each proxy slice and its teacher targets."""

from __future__ import annotations

from collections.abc import Callable

from layersearch.config import Config
from layersearch.workflows.results import PreparedSlice


def prepare(cfg: Config, before_targets: Callable[[dict, bool], None] | None = None) -> list[PreparedSlice]:
    """Each of ``proxy.slice_seeds``'s corpus slices, built now or found in ``corpus.cache_dir``; then,
    where ``proxy.teacher_cache`` resolves on, each slice's teacher targets (``data.targets``), in the
    pass that a search would otherwise make at its start. ``before_targets(estimate, on)`` hears the
    estimated size (MB per slice, held-out, total) before anything is written."""
    from layersearch.data.slices import get_slice
    from layersearch.data.targets import estimate, heldout_states, slice_targets, teacher_cache_on
    from layersearch.fitness.spec import evaluation_device
    from layersearch.models import load_teacher_config, load_tokenizer

    tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
    # The agreement readout tests on the corpus's last blocks: the evaluator's slices leave them out.
    reserve = cfg.tasks.agreement.heldout_blocks if cfg.tasks.readout == "agreement" else 0
    out, slices = [], []
    for seed in cfg.proxy.slice_seeds:
        sl = get_slice(cfg.corpus, tokenizer, cfg.proxy.slice_blocks, seed, reserve)
        slices.append(sl)
        out.append(PreparedSlice(seed, sl.key, sl.cached, int(sl.input_ids.shape[0]), sl.corpus_blocks, sl.tokens,
                                 sl.path.resolve()))
    device = evaluation_device(cfg)
    teacher_config = load_teacher_config(cfg.teacher.model, cfg.teacher.revision)
    on = teacher_cache_on(cfg, device, teacher_config)
    size = estimate(cfg, teacher_config, device)
    if before_targets is not None:
        before_targets(size, on)
    if on:
        from layersearch.data.slices import get_heldout
        from layersearch.models import load_teacher_for

        teacher = load_teacher_for(cfg, attentions=False)
        for sl in slices:
            slice_targets(cfg, teacher, sl.input_ids, device, size["precision"])
        if reserve:
            heldout_states(cfg, teacher, get_heldout(cfg.corpus, tokenizer, reserve), device)
    return out
