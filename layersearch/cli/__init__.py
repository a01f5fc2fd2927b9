"""The ``layersearch`` command line: one small module per subcommand."""

from __future__ import annotations

import typer

from layersearch.cli import data, validate

app = typer.Typer(
    name="layersearch",
    help="Search teacher-to-student layer mappings for task-agnostic BERT distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("validate")(validate.validate)
app.add_typer(data.app, name="data")
