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
    """Tokenize the corpus and build (or find) the proxy slice; report blocks, tokens, location."""
    from layersearch.data.slices import get_slice
    from layersearch.models import load_tokenizer

    cfg = load(config, set_)
    tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
    start = time.perf_counter()
    sl = get_slice(cfg.corpus, tokenizer, cfg.proxy.slice_blocks, cfg.proxy.slice_seed)
    table = Table(title="proxy corpus slice", show_header=False)
    table.add_row("key", sl.key)
    table.add_row("status", "cached (read from disk)" if sl.cached else "built now")
    table.add_row("blocks", f"{sl.input_ids.shape[0]:,} of {sl.corpus_blocks:,} in the corpus")
    table.add_row("tokens", f"{sl.tokens:,} ({cfg.corpus.seq_length} per block)")
    table.add_row("seed", str(cfg.proxy.slice_seed))
    table.add_row("cached at", str(sl.path.resolve()))
    table.add_row("time", f"{time.perf_counter() - start:.1f} s")
    console.print(table)
