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

    def say_size(size: dict, on: bool) -> None:
        cost = (f"teacher targets: {size['per_slice_mb']:.0f} MB per slice x {len(cfg.proxy.slice_seeds)} "
                f"slice(s) + {size['heldout_mb']:.0f} MB held-out = {size['total_mb']:.0f} MB at "
                f"{size['precision']} (proxy.teacher_cache: {cfg.proxy.teacher_cache}, budget "
                f"{cfg.proxy.teacher_cache_budget_gb:g} GB)")
        console.print(cost + (": writing them now" if on else ": not cached, the teacher runs in every evaluation"),
                      highlight=False, soft_wrap=True)

    slices = run(cfg, before_targets=say_size)
    console.print(slices_table(slices, cfg.corpus.seq_length))
    console.print(f"{len(slices)} slice(s) ready in {time.perf_counter() - start:.1f} s")
