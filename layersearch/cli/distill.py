"""``layersearch distill CONFIG --mapping M``: the full task-agnostic distillation
(``layersearch.workflows.distill``), into a model directory with a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layersearch.cli.common import ConfigArg, SetOpt, console, load, say, user_errors

MappingOpt = Annotated[
    str,
    typer.Option("--mapping", "-m",
                 help="uniform | last | lower | upper | mapping.json | 2,4,6 | search run id"),
]


@user_errors
def distill(
    config: ConfigArg,
    mapping: MappingOpt,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Model directory (default distill.output_dir)")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run whose checkpoints are beside the "
                                               "output directory")] = False,
    set_: SetOpt = None,
) -> None:
    """Distil the teacher into a student with the given layer mapping."""
    from layersearch.workflows.distill import distill as run

    result = run(load(config, set_), mapping, output, resume, say=say)
    console.print(f"[green]done[/] model directory {result.student_path} (loads with AutoModel; model card "
                  f"README.md, mapping.json, layersearch.yaml); MLflow run {result.run_id}")
