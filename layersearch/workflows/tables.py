"""Rich tables of workflow results, built and returned, never printed: the command line
prints them, and a notebook shows them (``rich`` renders in Jupyter)."""

from __future__ import annotations

from rich.table import Table


def fitness_table(names: list[str], results, gains: dict | None = None, title: str = "proxy fitness") -> Table:
    """One row per mapping, best first: per-task scores, fitness ± 95% interval, gain, time, status."""
    from layersearch.fitness import interval_text

    gains = gains or {}
    scale = ("held-out R^2 of a ridge map from the student's last layer to the teacher's" if names == ["agreement"]
             else "Matthews correlation, 0 = a constant predictor")
    table = Table(title=f"{title} ({', '.join(names)}; {scale}; ± = 95% interval)")
    table.add_column("mapping")
    table.add_column("genes", no_wrap=True)  # a mapping's genes are read whole
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("fitness", justify="right", style="bold", no_wrap=True)
    if gains:
        table.add_column("gain over init", justify="right")
    table.add_column("time", justify="right")
    table.add_column("status")
    for label, ev in sorted(results, key=lambda r: -(r[1].fitness if r[1].fitness is not None else -9)):
        scores = [_task_cell(ev, n) for n in names]
        gain = [_gain_cell(gains.get(label))] if gains else []
        table.add_row(label, str(ev.mapping), *scores, interval_text(ev), *gain,
                      f"{ev.timings.get('total_s', 0):.0f}s",
                      ev.status if len(ev.status) < 60 else ev.status[:57] + "...")
    return table


def gain_lines(gains: dict) -> list[str]:
    from layersearch.fitness.aggregate import gain_text

    return [f"{label}: {gain_text(g)}" for label, g in gains.items()]


def verdict_table(comparisons: list, reference, others: list, what: str = "") -> Table:
    """Each other mapping minus the reference: difference, 95% interval, Holm p, units, verdict."""
    table = Table(title=f"{what}paired differences against {comparisons[0].reference} {reference.mapping} "
                        "(fitness of the row minus the reference; 95% interval; Holm-corrected p that the "
                        f"difference lies beyond the margin δ = {comparisons[0].margin:g})")
    for col in ("mapping", "genes", "difference", "95% interval", "p (Holm)", "units", "verdict"):
        table.add_column(col, justify="right" if col in ("difference", "p (Holm)", "units") else "left",
                         no_wrap=col in ("genes", "95% interval"))
    for c, (_, ev) in zip(comparisons, others, strict=True):
        e = c.estimate
        style = {"better": "green", "worse": "red"}.get(c.verdict, "yellow")
        table.add_row(c.label, str(ev.mapping), f"{e.mean:+.4f}", f"[{e.low:+.4f}, {e.high:+.4f}]",
                      f"{c.p_adjusted:.3g}", str(e.units), f"[{style}]{c.verdict}[/]")
    return table


def slices_table(slices: list, seq_length: int) -> Table:
    """``data prepare``'s proxy corpus slices."""
    table = Table(title="proxy corpus slices")
    for col in ("seed", "key", "status", "blocks", "tokens", "cached at"):
        table.add_column(col)
    for sl in slices:
        table.add_row(str(sl.seed), sl.key, "cached" if sl.cached else "built now",
                      f"{sl.blocks:,} of {sl.corpus_blocks:,}", f"{sl.tokens:,} ({seq_length} per block)",
                      str(sl.path))
    return table


def _gain_cell(g) -> str:
    if g is None:
        return "-"
    return f"{g.mean:+.4f} [{g.low:+.4f}, {g.high:+.4f}]"


def _task_cell(ev, task: str) -> str:
    """Chance-corrected score, then the raw headline metric against what the majority class gets."""
    if task not in ev.scores:
        return "-"
    raw = next((v for k, v in ev.metrics.items() if k.startswith(f"{task}/")), None)
    cell = f"{ev.scores[task]:.3f}"
    if raw is not None and task in ev.majority:
        cell += f" ({raw:.3f} vs {ev.majority[task]:.3f})"
    return cell
