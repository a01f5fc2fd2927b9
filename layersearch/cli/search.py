"""``layersearch search``, ``show`` and ``export``: run the GA search and read its results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from layersearch.cli.common import ConfigArg, SetOpt, console, load, print_verdicts, user_errors
from layersearch.errors import UserError

RunIdArg = Annotated[str, typer.Argument(help="MLflow run id of a search, or a mapping file it wrote")]
UriOpt = Annotated[str, typer.Option("--tracking-uri", help="MLflow tracking URI")]


class SearchDisplay:
    """Live progress like Ray Tune's status table: on a terminal a panel redrawn in
    place; elsewhere (CI logs, files) one line per finished evaluation, each with the ETA."""

    def __init__(self, live: bool | None = None, fidelity: str | None = None):
        self.live_wanted = console.is_terminal if live is None else live
        self.fidelity = fidelity  # what proxy.evidence says of this proxy, said at the start
        self.live = None
        self.recent: list[str] = []
        self.stall_said: tuple | None = None  # (genes, seconds) of the last stall a log was told of

    # --- what is said -----------------------------------------------------------
    @staticmethod
    def status(p) -> str:
        from layersearch.fitness.aggregate import format_interval
        from layersearch.search.progress import duration

        best = "-" if p.best is None else (f"{p.best_genes} "
                                           + format_interval(p.best, p.best_low, p.best_high, p.best_seeds))
        rate = p.per_hour()
        stall = p.stall()
        return (f"{p.where()} | done {p.done} running {p.running} queued {p.queued} "
                f"(cached {p.cached}, failed {p.failed}) | best {best} | "
                f"{'-' if rate is None else f'{rate:.0f}'}/h | elapsed {duration(p.elapsed)} ETA {duration(p.eta())}"
                + (f" | {stall}" if stall else ""))

    def panel(self, p):
        from rich.console import Group
        from rich.text import Text

        return Group(Text(self.status(p)), *[Text(f"  {r}") for r in self.recent[-6:]])

    def say(self, text: str, p=None) -> None:
        if self.live is not None:
            self.live.console.print(text, highlight=False, soft_wrap=True)
            if p is not None:
                self.live.update(self.panel(p))
        else:
            console.print(text, highlight=False, soft_wrap=True)

    # --- events from the driver -------------------------------------------------------
    def __call__(self, kind: str, p, info: dict) -> None:
        if kind == "start":
            self._start(p, info)
        elif kind in ("done", "cached"):
            fit = "failed" if info["fitness"] is None else self._fit(info)
            note = "" if info["fitness"] is not None else f" ({info['status']})"
            line = f"{kind} {info['genes']} -> {fit}{note}"
            self.recent.append(line)
            if self.live is not None:
                self.live.update(self.panel(p))
            elif kind == "done":  # one line per evaluation run, with the ETA, for logs
                console.print(f"{self.status(p)} | {line}", highlight=False, soft_wrap=True)
        elif kind == "warning":
            self.say(f"[yellow]{info['message']}[/]", p)
        elif kind == "retry":
            self.say(f"[yellow]worker lost, retrying {info['genes']}[/]", p)
        elif kind == "rung":
            self.say(f"[dim]{p.where()}: {info['to_run']} of {info['entrants']} to run[/]", p)
        elif kind == "elites":
            self.say(f"hall of fame: promoting {info['genomes']} to every seed before calling any best", p)
        elif kind == "final":
            self.say(f"[bold]final race[/] at every seed: {', '.join(info['mappings'])}", p)
        elif kind == "generation":
            r = info["record"]
            if r.get("best") is not None:
                self.say(f"[bold]generation {r['gen'] + 1}[/]: best {r['best']:.4f} mean {r['mean']:.4f} "
                         f"std {r['std']:.4f} ({r['evaluated']} evaluated)", p)
        elif kind == "started" and self.live is not None:
            self.live.update(self.panel(p))
        elif kind == "waiting":  # nothing finished for a while: redraw, or in a log say a new stall
            if self.live is not None:
                self.live.update(self.panel(p))
            elif self._new_stall(p):
                console.print(self.status(p), highlight=False, soft_wrap=True)

    def _new_stall(self, p) -> bool:
        """A log hears of each stalled job once, and again each time its wait doubles."""
        found = p.stalled()
        if found is None:
            return False
        genes, running, _ = found
        said = self.stall_said
        if said is not None and said[0] == genes and running < 2 * said[1]:
            return False
        self.stall_said = (genes, running)
        return True

    @staticmethod
    def _fit(info: dict) -> str:
        from layersearch.fitness.aggregate import format_interval

        return format_interval(info["fitness"], info.get("low"), info.get("high"), info.get("seeds", 0))

    def _start(self, p, info: dict) -> None:
        console.print(f"search run [bold]{info['run_id']}[/]" + (" (resumed)" if info["resumed"] else ""))
        space, budget, strategy = info["space"], info["budget"], info["strategy"]
        if info["configured"] == "auto":
            why = (f"the space holds {space} genomes, no more than the budget of {budget}: every one is raced"
                   if strategy == "exhaustive" else
                   f"the space holds {space} genomes, more than the budget of {budget}")
            console.print(f"strategy auto -> [bold]{strategy}[/] ({why})", highlight=False)
        else:
            console.print(f"strategy {strategy}: {space} genomes in the space, budget {budget}", highlight=False)
        if self.fidelity:
            console.print(self.fidelity, highlight=False, soft_wrap=True)
        for note in info.get("folded", []):
            console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        if info.get("selection"):
            console.print(f"selection: genomes are ranked by their fitness adjusted for the units each "
                          f"holds (a mixed model); {info['selection']}", highlight=False, soft_wrap=True)
        rungs = info["rungs"]
        if len(rungs) > 1:
            console.print(f"racing: rungs of {' -> '.join(map(str, rungs))} {info.get('unit_word', 'units')}; "
                          f"at most the best "
                          f"1/{info['reduction']:g} of a rung go up (fewer when their intervals already "
                          "separate them)", highlight=False)
        if self.live_wanted:
            from rich.live import Live

            self.live = Live(self.panel(p), console=console, refresh_per_second=2, transient=True)
            self.live.start()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


@user_errors
def search(config: ConfigArg,
           resume: Annotated[str | None, typer.Option("--resume", help="Continue this search run id")] = None,
           export_to: Annotated[Path | None, typer.Option(
               "--export", help="Also write the best mapping JSON here")] = None,
           set_: SetOpt = None) -> None:
    """Search layer mappings with the GA; every evaluation is a nested MLflow run."""
    from layersearch.fidelity import config_fidelity_text
    from layersearch.workflows.search import search as run

    cfg = load(config, set_)
    from layersearch.fitness.spec import search_device

    fidelity = config_fidelity_text(cfg, search_device(cfg))  # the proxy the evaluators run
    from layersearch.cluster_paths import relative_cache_notes

    for note in relative_cache_notes(cfg):  # a cluster job's relative cache dies with the job
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    display = SearchDisplay(fidelity=fidelity)
    try:
        result = run(cfg, resume=resume, export_to=export_to, on_event=display)
    finally:
        display.close()
    if result.best is None:
        raise UserError("every evaluation failed; see the child runs' layersearch.status tags")
    from layersearch.fitness import interval_text

    hours = result.seconds / 3600
    console.print(f"[green]best mapping {result.best.mapping}[/] fitness {interval_text(result.best)} "
                  f"({result.evaluated} evaluations run in {result.seconds:.0f}s"
                  + (f", {result.evaluated / hours:.0f}/hour" if result.evaluated else "") + ")", highlight=False)
    if export_to is not None:
        console.print(f"wrote {export_to}")
    console.print(f"search run {result.run_id}; next: layersearch distill {config} --mapping {result.run_id}")
    say_verdict(result.best, result.versus_uniform, result.winner_is_uniform, result.runner_up)
    console.print(f"  {fidelity}", highlight=False, soft_wrap=True)
    if result.gain is not None:
        from layersearch.fitness.aggregate import gain_text

        console.print(f"  the winner's {gain_text(result.gain)}", highlight=False, soft_wrap=True)


def say_verdict(best, versus, winner_is_uniform: bool = False, runner_up=None) -> None:
    """The search's answer in plain words: the winner against TinyBERT's uniform mapping."""
    if versus is None:
        if winner_is_uniform:
            console.print(f"[bold]verdict:[/] the winner is the uniform mapping {best.mapping} itself")
            if runner_up is not None:  # how clear the win is
                e = runner_up.estimate
                console.print(f"  the runner-up {runner_up.label} minus uniform: {e.mean:+.4f} [{e.low:+.4f}, "
                              f"{e.high:+.4f}], δ {runner_up.margin:.4f}, p = {runner_up.p_adjusted:.3g} (Holm, "
                              f"beyond ±δ; {e.units} paired units, "
                              f"{e.distillation_runs} distillation run(s)) -> {runner_up.verdict}",
                              highlight=False, soft_wrap=True)
        else:
            console.print("[bold]verdict:[/] no comparable record of uniform in this search (not evaluated, "
                          "or failed); compare with layersearch compare CONFIG -m uniform -m "
                          + ",".join(map(str, best.mapping.genes)), highlight=False)
        return
    e = versus.estimate
    if not e.about_the_mapping:
        console.print(f"[bold]verdict:[/] none. This student {best.mapping} minus uniform's: {e.mean:+.4f} "
                      f"fitness, 95% interval [{e.low:+.4f}, {e.high:+.4f}] over {e.units} paired seed(s)",
                      highlight=False, soft_wrap=True)
        console.print("  each mapping was distilled once (one proxy slice), so the spread between "
                      "distillation runs is not measured and the difference is about these two students, "
                      "not their mappings; a verdict needs 2 or more slices (proxy.slice_seeds)")
        return
    words = {"better": "better than", "worse": "worse than", "equivalent": "equivalent to",
             "indistinguishable": "indistinguishable from"}
    console.print(f"[bold]verdict:[/] {best.mapping} is [bold]{words[versus.verdict]}[/] uniform: "
                  f"{e.mean:+.4f} fitness, 95% interval [{e.low:+.4f}, {e.high:+.4f}], margin δ "
                  f"{versus.margin:.4f}, p = {versus.p_adjusted:.3g} (beyond ±δ) over {e.units} paired seed(s) "
                  f"from {e.distillation_runs} distillation runs", highlight=False, soft_wrap=True)
    console.print("  (p is Holm-corrected over every mapping that reached every seed, since the winner was "
                  "chosen among them on these same seeds; the interval is the raw one, not adjusted for that "
                  "choice: it carries the winner's luck, and may exclude 0 where the verdict does not)")
    if versus.verdict == "indistinguishable":
        console.print("  at this budget the search cannot tell its winner from uniform; more proxy slices "
                      "(proxy.slice_seeds) or a larger proxy budget would narrow the interval")


def _children(tracker, run_id: str):
    """A search's candidate evaluations (not its winner's init baseline, also a child run)."""
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                      max_results=50000)
    return [r for r in runs if r.data.tags.get("layersearch.kind", "evaluation") == "evaluation"]


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


def _run_id(arg: str) -> str:
    """A search run id, or a mapping file written by search/export (which names its run)."""
    path = Path(arg)
    if arg.endswith(".json") and path.is_file():
        from layersearch.mapping import load_mapping

        _, record = load_mapping(path)
        if not record.get("search_run_id"):
            raise UserError(f"{path} names no search run (it was not written by a search)")
        return record["search_run_id"]
    return arg


def _fitness_cell(metrics: dict) -> str:
    from layersearch.fitness.aggregate import format_interval

    return format_interval(metrics.get("fitness"), metrics.get("fitness_ci_low"), metrics.get("fitness_ci_high"),
                           int(metrics.get("fitness_seeds", 0)))


def _rung(child) -> int:
    """The racing rung an evaluation reached: its rows rank only against rows of the same
    rung (more seeds first), since a one-seed score is not comparable with a three-seed one."""
    return int(child.data.tags.get("layersearch.rung", 0))


def _genes(child, prefix: str = "gene_") -> list[int]:
    keys = sorted((k for k in child.data.params if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
    return [int(child.data.params[k]) for k in keys]


AgainstOpt = Annotated[str | None, typer.Option(
    "--against", help="Compare the top mappings with this one (uniform, lower, upper, last or 2,4,6), paired")]


@user_errors
def show(run_id: RunIdArg, config: ConfigOpt = None, tracking_uri: UriOpt = "sqlite:///mlflow.db",
         top: Annotated[int, typer.Option(help="Rows to show (and mappings to compare)")] = 20,
         against: AgainstOpt = None, set_: SetOpt = None) -> None:
    """Leaderboard of a search (fitness ± 95% interval, seeds); --against adds paired verdicts."""
    run_id = _run_id(run_id)
    tracker, run = _search_tracker(run_id, config, set_, tracking_uri)
    children = _children(tracker, run_id)
    tasks = sorted({k.removeprefix("score/") for c in children for k in c.data.metrics
                    if k.startswith("score/")})
    table = Table(title=f"search {run_id} ({run.info.status}, {len(children)} evaluations; "
                        "fitness ± 95% interval (seeds), ranked within each racing rung, top rung first)")
    for col in ("rank", "mapping", *tasks, "fitness", "status", "cached", "worker"):
        table.add_column(col, justify="right" if col in tasks or col in ("rank", "fitness") else "left")
    ranked = sorted(children, key=lambda c: (-_rung(c), -c.data.metrics.get("fitness", float("-inf"))))
    for i, c in enumerate(ranked[:top], 1):
        table.add_row(str(i), str(_genes(c)),
                      *[f"{c.data.metrics[f'score/{t}']:.3f}" if f"score/{t}" in c.data.metrics else "-"
                        for t in tasks],
                      _fitness_cell(c.data.metrics), c.data.tags.get("layersearch.status", ""),
                      c.data.tags.get("layersearch.cached", ""), c.data.tags.get("layersearch.worker", ""))
    console.print(table)
    best = run.data.tags.get("layersearch.best_genes")
    if best:
        console.print(f"best mapping {best} (fitness {run.data.metrics.get('best_fitness', float('nan')):.4f})")
    _show_distills(tracker, run_id)
    if against:
        _show_against(tracker, run, ranked, top, against)


def _show_distills(tracker, run_id: str) -> None:
    """The distill runs whose mapping came from this search (tag layersearch.search_run)."""
    from layersearch.resolve import SEARCH_RUN_TAG
    from layersearch.tracking import runs_tagged

    runs = runs_tagged(tracker.client, SEARCH_RUN_TAG, run_id)
    if not runs:
        console.print("no distill run from this search yet")
        return
    table = Table(title=f"distill runs from search {run_id}")
    table.add_column("run", no_wrap=True, min_width=32)  # an id is copied whole, never folded
    for col in ("status", "mapping", "final_loss", "output dir"):
        table.add_column(col, justify="right" if col == "final_loss" else "left", overflow="fold")
    for r in runs:
        params, loss = r.data.params, r.data.metrics.get("final_loss")
        table.add_row(r.info.run_id, r.info.status, str(_genes(r) or params.get("mapping", "-")),
                      "-" if loss is None else f"{loss:.4f}",
                      params.get("output_dir") or params.get("distill.output_dir") or "-")
    console.print(table)


def _show_against(tracker, run, ranked: list, top: int, against: str) -> None:
    """Paired verdicts of a search's top mappings against a reference it evaluated; an MLflow run too.

    The winner was picked from every mapping that reached the top rung, so Holm
    runs over all of those against the reference, not over the rows shown.
    """
    from layersearch.fitness import compare
    from layersearch.mapping import resolve_mapping
    from layersearch.tracking import load_evaluation
    from layersearch.workflows.compare import record_verdicts

    params = run.data.params
    n, m = int(params["num_teacher_layers"]), int(params["num_student_layers"])
    reference = resolve_mapping(against, m, n)
    # Under search.search_init the reference is uniform supervision with uniform init.
    ref_child = next((c for c in ranked if tuple(_genes(c)) == reference.genes
                      and _genes(c, "init_") in ([], list(reference.genes))), None)
    if ref_child is None:
        raise UserError(f"--against {against}: this search did not evaluate {reference}; run "
                        f"layersearch compare CONFIG -m {against} -m <mapping> instead")
    shown = [c for c in ranked[:top] if c is not ref_child and c.data.metrics.get("fitness") is not None
             and _rung(c) == _rung(ranked[0])]
    if not shown:
        console.print(f"the top mapping is {against} {reference} itself: nothing to compare")
        return
    ref = load_evaluation(tracker, ref_child.info.run_id)
    family = []  # (label, evaluation, shown?) for every mapping that could have won, with a record
    top_rung = _rung(ranked[0]) if ranked else 0
    for c in ranked:
        if c is ref_child or c.data.metrics.get("fitness") is None or _rung(c) < top_rung:
            continue
        ev = load_evaluation(tracker, c.info.run_id)
        if ev is not None:
            family.append((str(ev.mapping), ev, c in shown))
    if ref is None or not any(f[2] for f in family):
        raise UserError("--against: these evaluation runs hold no per-seed records (evaluation.json); "
                        "they were logged by an older version")
    names = json.loads(params.get("tasks.names", "[]")) or sorted(ref.dev_labels)
    weights = json.loads(params["tasks.weights"]) if params.get("tasks.weights", "null") != "null" else None
    if params.get("tasks.readout") == "agreement":  # one task-free score, whatever tasks the config names
        names, weights = ["agreement"], None
    from layersearch.config import MARGINS

    # The search's own margin where it logged one; else its readout's default.
    margin = float(run.data.tags.get("layersearch.margin", MARGINS.get(params.get("tasks.readout"),
                                                                        MARGINS["finetune"])))
    comparisons = compare((against, ref), [(label, ev) for label, ev, _ in family], names, weights, margin=margin)
    picked = [(c, (label, ev)) for c, (label, ev, on) in zip(comparisons, family, strict=True) if on]
    with tracker.run(f"compare vs {against}", parent_id=run.info.run_id,
                     tags={"layersearch.kind": "compare"}) as compare_id:
        comparisons, others = [c for c, _ in picked], [o for _, o in picked]
        notes = record_verdicts(tracker, compare_id, comparisons, ref, others)
    print_verdicts(comparisons, ref, others, notes)
    console.print(f"(Holm over all {len(family)} mappings against {against} that reached the top rung, "
                  "shown or not: the winner was picked among them)")
    # The verdicts rank proxy students: what the search knew of its proxy's agreement with final ones.
    console.print(f"proxy fidelity of this search: {run.data.tags.get('proxy_fidelity', 'not recorded')}")


@user_errors
def export(run_id: RunIdArg,
           output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the mapping JSON")],
           config: ConfigOpt = None, tracking_uri: UriOpt = "sqlite:///mlflow.db", set_: SetOpt = None) -> None:
    """Write a search's best mapping as a mapping JSON file (for `distill --mapping FILE`)."""
    tracker, _ = _search_tracker(run_id, config, set_, tracking_uri)
    from layersearch.workflows.search import export_best

    mapping = export_best(tracker, run_id, output)
    console.print(f"wrote {output}: mapping {mapping}")

