"""``layersearch compare CONFIG -m A -m B [-m C ...]``: paired verdicts against the first mapping
(``layersearch.workflows.compare``): the fitness table, then each difference with its 95%
interval, Holm-corrected p and verdict."""

from __future__ import annotations

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
def compare(config: ConfigArg, mapping: MappingsOpt, no_cache: NoCacheOpt = False, set_: SetOpt = None) -> None:
    """Paired comparison of mappings against the first one: difference, 95% interval, verdict."""
    from layersearch.workflows.compare import compare as run

    result = run(load(config, set_), list(mapping), use_cache=not no_cache, say=say)
    results = result.evaluated.evaluations
    print_evaluated(result.evaluated)
    print_verdicts(result.comparisons, results[0][1], results[1:], result.notes)
    console.print(f"comparison run {result.run_id}")
