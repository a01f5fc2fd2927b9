"""``layersearch search``, ``show`` and ``export``: run the GA search and read its results."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from layersearch.cli.common import ConfigArg, SetOpt, console, load, user_errors
from layersearch.errors import UserError

RunIdArg = Annotated[str, typer.Argument(help="MLflow run id of a search")]
UriOpt = Annotated[str, typer.Option("--tracking-uri", help="MLflow tracking URI")]


def _line(kind: str, p, info: dict) -> None:
    elapsed = time.perf_counter() - p.started
    best = "-" if p.best is None else f"{p.best:.4f} {p.best_genes}"
    head = (f"[dim]{elapsed:6.0f}s[/] gen {p.generation + 1}/{p.generations} | done {p.done} "
            f"running {p.running} cached {p.cached} failed {p.failed} | best {best}")
    if kind == "start":
        console.print(f"search run [bold]{info['run_id']}[/]" + (" (resumed)" if info["resumed"] else ""))
    elif kind in ("done", "cached"):
        fit = "failed" if info["fitness"] is None else f"{info['fitness']:.4f}"
        note = "" if info["fitness"] is not None else f" ({info['status']})"
        console.print(f"{head} | {kind} {info['genes']} -> {fit}{note}", highlight=False)
    elif kind == "retry":
        console.print(f"{head} | [yellow]worker lost, retrying {info['genes']}[/]", highlight=False)
    elif kind == "generation":
        r = info["record"]
        if r.get("best") is not None:
            console.print(f"[bold]generation {r['gen'] + 1}[/]: best {r['best']:.4f} mean {r['mean']:.4f} "
                          f"std {r['std']:.4f} ({r['evaluated']} evaluated)", highlight=False)


@user_errors
def search(config: ConfigArg,
           resume: Annotated[str | None, typer.Option("--resume", help="Continue this search run id")] = None,
           export_to: Annotated[Path | None, typer.Option(
               "--export", help="Also write the best mapping JSON here")] = None,
           set_: SetOpt = None) -> None:
    """Search layer mappings with the GA; every evaluation is a nested MLflow run."""
    from layersearch.search.driver import SearchDriver

    cfg = load(config, set_)
    driver = SearchDriver(cfg, on_event=_line)
    result = driver.run(resume_run_id=resume)
    if result.best is None:
        raise UserError("every evaluation failed; see the child runs' layersearch.status tags")
    hours = result.seconds / 3600
    console.print(f"[green]best mapping {result.best.mapping}[/] fitness {result.best.fitness:.4f} "
                  f"({result.evaluated} evaluations run in {result.seconds:.0f}s"
                  + (f", {result.evaluated / hours:.0f}/hour" if result.evaluated else "") + ")")
    if export_to is not None:
        from layersearch.mapping import save_mapping

        save_mapping(result.best.mapping, export_to, cfg.teacher.model, sorted(cfg.objective.terms),
                     fitness=result.best.fitness, search_run_id=result.run_id)
        console.print(f"wrote {export_to}")
    console.print(f"search run {result.run_id}; next: layersearch distill {config} --mapping {result.run_id}")


def _children(tracker, run_id: str):
    return tracker.client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                      max_results=50000)


def _tracker(config: Path | None, set_, uri: str | None):
    from layersearch.config import TrackingConfig
    from layersearch.tracking import Tracker

    if config is not None:
        return Tracker(load(config, set_, check_environment=False).tracking)
    return Tracker(TrackingConfig(uri=uri or "sqlite:///mlflow.db"))


def _search_tracker(run_id: str, config, set_, uri):
    tracker = _tracker(config, set_, uri)
    try:
        run = tracker.client.get_run(run_id)
    except Exception:
        raise UserError(f"no run {run_id} in {tracker.uri}; pass --config or --tracking-uri") from None
    tracker.experiment_id = run.info.experiment_id
    return tracker, run


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Config whose tracking section to use")]


@user_errors
def show(run_id: RunIdArg, config: ConfigOpt = None, tracking_uri: UriOpt = "sqlite:///mlflow.db",
         top: Annotated[int, typer.Option(help="Rows to show")] = 20, set_: SetOpt = None) -> None:
    """Leaderboard of a search: its evaluations ranked by fitness."""
    tracker, run = _search_tracker(run_id, config, set_, tracking_uri)
    children = _children(tracker, run_id)
    tasks = sorted({k.removeprefix("score/") for c in children for k in c.data.metrics
                    if k.startswith("score/")})
    table = Table(title=f"search {run_id} ({run.info.status}, {len(children)} evaluations)")
    for col in ("rank", "mapping", *tasks, "fitness", "status", "cached", "worker"):
        table.add_column(col, justify="right" if col in tasks or col in ("rank", "fitness") else "left")
    ranked = sorted(children, key=lambda c: -c.data.metrics.get("fitness", float("-inf")))
    for i, c in enumerate(ranked[:top], 1):
        genes = [c.data.params[k] for k in sorted((k for k in c.data.params if k.startswith("gene_")),
                                                   key=lambda k: int(k[5:]))]
        fit = c.data.metrics.get("fitness")
        table.add_row(str(i), "[" + ", ".join(genes) + "]",
                      *[f"{c.data.metrics[f'score/{t}']:.3f}" if f"score/{t}" in c.data.metrics else "-"
                        for t in tasks],
                      "-" if fit is None else f"{fit:.4f}", c.data.tags.get("layersearch.status", ""),
                      c.data.tags.get("layersearch.cached", ""), c.data.tags.get("layersearch.worker", ""))
    console.print(table)
    best = run.data.tags.get("layersearch.best_genes")
    if best:
        console.print(f"best mapping {best} (fitness {run.data.metrics.get('best_fitness', float('nan')):.4f})")


@user_errors
def export(run_id: RunIdArg,
           output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the mapping JSON")],
           config: ConfigOpt = None, tracking_uri: UriOpt = "sqlite:///mlflow.db", set_: SetOpt = None) -> None:
    """Write a search's best mapping as a mapping JSON file (for `distill --mapping FILE`)."""
    import shutil
    import tempfile

    from layersearch.mapping import load_mapping

    tracker, _ = _search_tracker(run_id, config, set_, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(run_id, "best_mapping.json", tmp)
        except Exception:
            raise UserError(f"run {run_id} has no best_mapping.json; has the search finished?") from None
        mapping, _ = load_mapping(path)  # validate before handing it on
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, output)
    console.print(f"wrote {output}: mapping {mapping}")
