"""``layersearch validate CONFIG``: print the resolved config or every problem."""

from __future__ import annotations

from rich.syntax import Syntax

from layersearch.cli.common import ConfigArg, SetOpt, console, load, user_errors


@user_errors
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check a config (schema, teacher, data paths, student shape) and print it resolved."""
    cfg = load(config, set_)
    console.print(Syntax(cfg.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))
    from layersearch.search.racing import Ladder

    notes = Ladder.folding_notes(cfg)
    if cfg.evidence_drift():
        from layersearch.fidelity import config_fidelity_text

        notes.append(config_fidelity_text(cfg))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"[green]ok[/] {config}")
