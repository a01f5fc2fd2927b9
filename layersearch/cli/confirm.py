"""``layersearch confirm CONFIG -m A -m B ...``: do the mappings make better final students?

Full distillations of each mapping, scored downstream, paired against the first
(``layersearch.workflows.confirm``); prints the final students' table and the verdicts.
"""

from __future__ import annotations

from typing import Annotated

import typer

from layersearch.cli.common import (
    ConfigArg,
    MappingsOpt,
    NoCacheOpt,
    SetOpt,
    console,
    load,
    print_evaluated,
    print_verdicts,
    say,
    user_errors,
)


@user_errors
def confirm(config: ConfigArg, mapping: MappingsOpt,
            resume: Annotated[bool, typer.Option(help="Continue a distillation that a killed confirm left "
                                                       "checkpoints of")] = False,
            no_cache: NoCacheOpt = False, set_: SetOpt = None) -> None:
    """Ground truth: full distillations of the mappings, scored downstream, paired against the first."""
    from layersearch.workflows.confirm import confirm as run

    result = run(load(config, set_), list(mapping), resume=resume, use_cache=not no_cache, say=say)
    print_evaluated(result.evaluated, title="final students")
    results = result.evaluated.evaluations
    if result.comparisons:
        print_verdicts(result.comparisons, results[0][1], results[1:], result.notes, what="final students: ")
    console.print(f"confirm run {result.run_id}")
