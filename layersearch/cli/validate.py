"""``layersearch validate CONFIG``: print the resolved config or every problem."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.syntax import Syntax

from layersearch.cli.common import ConfigArg, SetOpt, console, load, user_errors

EvidenceSpecOpt = Annotated[bool, typer.Option(
    "--evidence-spec", help="Print only the proxy.evidence.spec block of this config's proxy (to paste under "
                            "proxy.evidence once bench/ladder.py has measured it)")]


@user_errors
def validate(config: ConfigArg, set_: SetOpt = None, evidence_spec: EvidenceSpecOpt = False) -> None:
    """Check a config (schema, teacher, data paths, student shape) and print it resolved."""
    from layersearch.checks import check
    from layersearch.errors import UserError
    from layersearch.fidelity import config_fidelity_text, evidence_drift

    cfg = load(config, set_, check_environment=False)
    try:
        check(cfg)
    except UserError:
        # The problems exit 2 (one line each, on stderr); what the ladder's evidence says of
        # this config is still worth knowing while it is fixed, so it goes first, on stdout.
        try:
            if not evidence_spec and evidence_drift(cfg):
                console.print(f"[yellow]note:[/] {config_fidelity_text(cfg)}", highlight=False, soft_wrap=True)
        except (UserError, OSError):
            pass  # a config that cannot even name its proxy has no evidence to compare
        raise
    if evidence_spec:
        import yaml

        from layersearch.fidelity import evidence_spec as spec_of

        # Plain print: the block is meant to be pasted or redirected, with no markup or wrapping.
        print(yaml.safe_dump({"spec": spec_of(cfg)}, sort_keys=True, width=1000), end="")
        return
    console.print(Syntax(cfg.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))
    from layersearch.cluster_paths import relative_cache_notes
    from layersearch.search.racing import Ladder

    notes = Ladder.folding_notes(cfg) + relative_cache_notes(cfg)
    if evidence_drift(cfg):
        notes.append(config_fidelity_text(cfg))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"[green]ok[/] {config}")
