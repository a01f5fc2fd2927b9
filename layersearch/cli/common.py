"""What every subcommand shares: loading the config and reporting user errors."""

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

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file, e.g. configs/quickstart.yaml")]
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
