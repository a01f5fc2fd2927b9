"""``layersearch data prepare CONFIG``: build and cache the proxy corpus slices
(``layersearch.workflows.data``)."""

from __future__ import annotations

import time

import typer

from layersearch.cli.common import ConfigArg, SetOpt, console, load, user_errors

app = typer.Typer(help="Prepare and inspect the distillation corpus.", no_args_is_help=True)


@app.command("prepare")
@user_errors
def prepare(config: ConfigArg, set_: SetOpt = None) -> None:
    """Tokenize the corpus and build (or find) each proxy slice; report blocks, tokens, location."""
    from layersearch.workflows.data import prepare as run
    from layersearch.workflows.tables import slices_table

    cfg = load(config, set_)
    start = time.perf_counter()
    slices = run(cfg)
    console.print(slices_table(slices, cfg.corpus.seq_length))
    console.print(f"{len(slices)} slice(s) ready in {time.perf_counter() - start:.1f} s")
