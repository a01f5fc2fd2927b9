"""What every subcommand shares: loading the config, reporting user errors, shared options and
the rendering of workflow results on the console."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from layersearch.config import Config, load_config
from layersearch.errors import UserError

console = Console()
err_console = Console(stderr=True)
# Where stdout is a log (CI, tee, a job's file) rather than a terminal, tables are as wide as
# their rows: a mapping's genes and its fitness ± interval stay on one line, never wrapped at 80.
LOG_WIDTH = 1000


def fit_to_output() -> None:
    """Full-width tables when stdout is not a terminal (``COLUMNS`` still wins where set)."""
    import os

    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file, e.g. configs/quickstart.yaml")]
MappingsOpt = Annotated[list[str], typer.Option(
    "--mapping", "-m", help="uniform | last | lower | upper | file.json | 2,4,6 | search run id (repeatable)")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Re-run cached evaluations")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Dotted override KEY=VALUE, e.g. search.population=16 (repeatable)"),
]


def user_errors(fn):
    """Print a UserError as one line per problem and exit with its code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            for line in getattr(exc, "problems", None) or [str(exc)]:
                err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper


def load(config: Path, overrides: list[str] | None, check_environment: bool = True) -> Config:
    cfg = load_config(config, overrides or [])
    if check_environment:
        from layersearch.checks import check

        check(cfg)
    return cfg


def say(text: str) -> None:
    """A workflow's progress line, on the console."""
    console.print(text, highlight=False, soft_wrap=True)


def print_evaluated(evaluated, title: str = "proxy fitness") -> None:
    """The fitness table of an ``evaluate``/``baselines``/``confirm`` result, then its gains."""
    from layersearch.workflows.tables import fitness_table, gain_lines

    console.print(fitness_table(evaluated.tasks, evaluated.evaluations, evaluated.gains, title=title))
    for line in gain_lines(evaluated.gains):
        say(line)


def print_verdicts(comparisons: list, reference, others: list, notes: list[str], what: str = "") -> None:
    """The verdict table, each verdict in words, then what limits them."""
    from layersearch.workflows.tables import verdict_table

    console.print(verdict_table(comparisons, reference, others, what=what))
    for c in comparisons:
        say(c.text())
    for note in notes:
        say(note if note.startswith("these verdicts") else f"[yellow]{note}[/]")
