"""``layersearch data prepare CONFIG``: build and cache the proxy corpus slice."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from layersearch.cli.common import ConfigArg, SetOpt, console, load, user_errors

app = typer.Typer(help="Prepare and inspect the distillation corpus.", no_args_is_help=True)


@app.command("prepare")
@user_errors
def prepare(config: ConfigArg, set_: SetOpt = None) -> None:
    """Tokenize the corpus and build (or find) each proxy slice; report blocks, tokens, location."""
    from layersearch.data.slices import get_slice
    from layersearch.models import load_tokenizer

    cfg = load(config, set_)
    tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
    start = time.perf_counter()
    table = Table(title="proxy corpus slices")
    for col in ("seed", "key", "status", "blocks", "tokens", "cached at"):
        table.add_column(col)
    for seed in cfg.proxy.slice_seeds:
        sl = get_slice(cfg.corpus, tokenizer, cfg.proxy.slice_blocks, seed)
        table.add_row(str(seed), sl.key, "cached" if sl.cached else "built now",
                      f"{sl.input_ids.shape[0]:,} of {sl.corpus_blocks:,}",
                      f"{sl.tokens:,} ({cfg.corpus.seq_length} per block)", str(sl.path.resolve()))
    console.print(table)
    console.print(f"{len(cfg.proxy.slice_seeds)} slice(s) ready in {time.perf_counter() - start:.1f} s")
