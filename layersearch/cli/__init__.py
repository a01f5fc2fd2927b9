"""The ``layersearch`` command line: one small module per subcommand."""

from __future__ import annotations

import typer

from layersearch.cli import compare, confirm, data, distill, evaluate, search, validate

app = typer.Typer(
    name="layersearch",
    help="Search teacher-to-student layer mappings for task-agnostic BERT distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _quiet_libraries() -> None:
    """Keep library chatter (store migrations, weight-loading bars) out of the user's terminal."""
    import logging
    import os

    # MLflow sets its own logger level on import, from this variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from layersearch.cli.common import fit_to_output

    fit_to_output()


app.command("validate")(validate.validate)
app.add_typer(data.app, name="data")
app.command("distill")(distill.distill)
app.command("evaluate")(evaluate.evaluate)
app.command("baselines")(evaluate.baselines)
app.command("compare")(compare.compare)
app.command("confirm")(confirm.confirm)
app.command("search")(search.search)
app.command("show")(search.show)
app.command("export")(search.export)
