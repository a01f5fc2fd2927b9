"""Every ``layersearch`` command quoted in README.md, docs/*.md and docker/README.md parses as the
command line parses it (no unknown command or option), and every ``--set`` key it passes, on the
config it names, passes ``validate``'s schema (no unknown key, no bad value).

Placeholders stay as words (RUN_ID, "$RUN"); CONFIG, $C and a config file that does not exist
stand for configs/quickstart.yaml; ``[...]`` marks optional parts and ``key=value`` a template.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from conftest import ROOT

from layersearch.cli import app
from layersearch.config import ConfigError, load_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docker" / "README.md"]
SHELL_BLOCKS = ("", "bash", "sh", "console", "shell")
PLACEHOLDER_CONFIGS = ("CONFIG", "$C")
TEMPLATE_KEYS = ("key", "KEY")


def _snippets(text: str) -> list[str]:
    """Shell code blocks (line by line, continuations joined) and inline code spans."""
    found = []
    for lang, block in re.findall(r"```([a-z]*)\n(.*?)```", text, re.S):
        if lang in SHELL_BLOCKS:
            found += re.sub(r"\\\n\s*", " ", block).splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return found + re.findall(r"`([^`\n]+)`", prose)


def _commands(snippet: str) -> list[list[str]]:
    """The argument lists after each ``layersearch`` in a snippet (``&&``, ``;`` and ``|`` end one)."""
    text = re.sub(r"\[(--?[^\]]*)\]", r" \1 ", snippet).replace("...", " ")  # [--opt X] is optional
    if text.lstrip().startswith("$ "):
        text = text.lstrip()[2:]
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:  # prose with an apostrophe: no command in it
        return []
    out, current = [], None
    for i, tok in enumerate(tokens):
        before = tokens[i - 1] if i else ""
        starts = i == 0 or before in ("--", "&&", ";", "|", "||") or re.fullmatch(r"[A-Z_]+=\S*", before)
        if tok.endswith("/layersearch") or (tok == "layersearch" and starts):
            current = []
            out.append(current)
        elif tok in ("&&", ";", "|", "||"):
            current = None
        elif current is not None:
            current.append(tok)
    return out


def all_commands() -> list[tuple[str, list[str]]]:
    return [(f"{path.relative_to(ROOT)}: {snippet.strip()}", args)
            for path in DOCS for snippet in _snippets(path.read_text()) for args in _commands(snippet)]


def problem(args: list[str]) -> str | None:
    """Why ``layersearch ARGS`` would fail to parse, or its config or keys fail the schema; None if fine."""
    group = typer.main.get_command(app)
    cmd, name, rest = group, "layersearch", list(args)
    while hasattr(cmd, "commands"):  # a group (typer vendors its own click)
        if not rest:
            return None  # a bare mention of a command group
        if rest[0] == "COMMAND":
            return None  # `layersearch COMMAND --help`: any command
        if rest[0] not in cmd.commands:
            return f"unknown command {rest[0]!r} after {name!r}"
        name, cmd, rest = rest[0], cmd.commands[rest[0]], rest[1:]
    if not rest:
        return None  # a bare mention of the command, no arguments to check
    options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for tok in rest:
        if tok.startswith("-") and tok.split("=")[0] not in options and not re.fullmatch(r"-?[\d,]+", tok):
            return f"unknown option {tok} for {name} (it has {', '.join(sorted(options))})"
    takes_config = any(p.name == "config" and p.param_type_name == "argument" for p in cmd.params)
    if takes_config:
        first = next((i for i, t in enumerate(rest) if not t.startswith("-")), None)
        if first is None or (first > 0 and rest[first - 1] in options and
                             not _is_flag(cmd, rest[first - 1])):
            return f"{name} takes a CONFIG first"
        if rest[first] in PLACEHOLDER_CONFIGS or not (ROOT / rest[first]).is_file():
            rest[first] = "configs/quickstart.yaml"
    try:
        ctx = cmd.make_context(name, rest, resilient_parsing=False)
    except Exception as exc:  # typer's click: UsageError, BadParameter, ...
        if not hasattr(exc, "format_message"):
            raise
        return f"{name}: {exc.format_message()}"
    sets = [s for s in ctx.params.get("set_") or [] if s.split("=")[0] not in TEMPLATE_KEYS]
    config = ctx.params.get("config")
    if config is None and sets:
        config = Path("configs/quickstart.yaml")  # show/export read keys of no file: check them on one
    if config is not None:
        try:
            load_config(ROOT / config, overrides=sets)
        except ConfigError as exc:
            return f"{name}: {'; '.join(exc.problems)}"
    return None


def _is_flag(cmd, opt: str) -> bool:
    return any(opt in (*p.opts, *p.secondary_opts) and getattr(p, "is_flag", False) for p in cmd.params)


def test_the_docs_quote_their_commands():
    commands = all_commands()
    assert len(commands) > 60, "the extraction found the commands"
    assert any(args[:1] == ["compare"] and "--set" in args for _, args in commands)
    broken = [f"{where}\n    -> {why}" for where, args in commands if (why := problem(args))]
    assert not broken, "commands in the docs that fail:\n" + "\n".join(broken)


@pytest.mark.parametrize("args, words", [
    (["search", "CONFIG", "--exprot", "best.json"], "unknown option --exprot"),
    (["compare", "CONFIG", "-m", "uniform", "--set", "proxy.train.max_stepz=1"], "proxy.train.max_stepz"),
    (["evaluate", "CONFIG", "-m", "uniform", "--set", "tasks.names=[sst9]"], "unknown task(s) ['sst9']"),
    (["searhc", "CONFIG"], "unknown command 'searhc'"),
    (["data", "prepair", "CONFIG"], "unknown command 'prepair'"),
    (["distill", "--mapping", "3,6,9,12"], "takes a CONFIG first"),
    (["show", "RUN_ID", "--set", "tracking.urii=x"], "tracking.urii"),
])
def test_a_broken_command_is_caught(args, words):
    assert words in problem(args)
    assert problem([a.replace("exprot", "export").replace("stepz", "steps").replace("sst9", "sst2")
                    .replace("searhc", "search").replace("prepair", "prepare").replace("urii", "uri")
                    for a in args] if "--mapping" not in args else ["distill", "CONFIG", *args[1:]]) is None
