"""``layersearch evaluate`` and ``layersearch baselines``: proxy fitness of given mappings
(``layersearch.workflows.evaluate``), printed as a table."""

from __future__ import annotations

from typing import Annotated

import typer

from layersearch.cli.common import ConfigArg, MappingsOpt, NoCacheOpt, SetOpt, load, print_evaluated, say, user_errors


@user_errors
def evaluate(config: ConfigArg, mapping: MappingsOpt,
             no_cache: NoCacheOpt = False,
             set_: SetOpt = None) -> None:
    """Proxy fitness of one or more mappings: distil, fine-tune on the proxy tasks, score."""
    from layersearch.workflows.evaluate import evaluate as run

    print_evaluated(run(load(config, set_), list(mapping), use_cache=not no_cache, say=say))


@user_errors
def baselines(config: ConfigArg,
              random_count: Annotated[int, typer.Option("--random", help="Seeded random mappings to add")] = 2,
              seed: Annotated[int, typer.Option(help="Seed of the random mappings")] = 0,
              no_cache: NoCacheOpt = False,
              set_: SetOpt = None) -> None:
    """The named heuristics (uniform, last, lower, upper) and a few random mappings, side by side."""
    from layersearch.workflows.evaluate import baselines as run

    print_evaluated(run(load(config, set_), random_count, seed, use_cache=not no_cache, say=say))
