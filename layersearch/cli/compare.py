"""``layersearch compare CONFIG -m A -m B [-m C ...]``: paired verdicts against the first mapping.

Every mapping is evaluated under one proxy spec (the same slices, fine-tune
seeds and dev examples), so each difference with the reference is paired by
seed and by dev example. For each other mapping it prints the difference with
a 95% interval, a Holm-corrected p-value and one word: better, worse or
indistinguishable. The comparison is an MLflow run, with the evaluations
nested under it and the verdicts as tags and metrics.
"""

from __future__ import annotations

import re

from rich.table import Table

from layersearch.cli.common import ConfigArg, SetOpt, console, load, user_errors
from layersearch.cli.evaluate import MappingsOpt, NoCacheOpt, evaluate_all
from layersearch.errors import UserError

_KEY_SAFE = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_name(genes) -> str:
    """A mapping as MLflow accepts in a metric or tag name (no commas or brackets)."""
    return _KEY_SAFE.sub("-", "-".join(str(g) for g in genes))


def report(tracker, run_id: str, comparisons: list, reference, others: list, gains: dict | None = None,
           what: str = "", cfg=None) -> None:
    """Print the verdict table and record it on ``run_id`` (tags, metrics, comparisons.json);
    ``gains`` (label -> distillation gain) become ``distillation_gain/<genes>`` tags. With the
    proxy's ``cfg``, what is known of the proxy's agreement with final students follows the
    verdicts (they rank proxy students) and tags the run ``proxy_fidelity``."""
    from layersearch.fitness.aggregate import gain_word

    table = Table(title=f"{what}paired differences against {comparisons[0].reference} {reference.mapping} "
                        "(fitness of the row minus the reference; 95% interval; Holm-corrected p)")
    for col in ("mapping", "genes", "difference", "95% interval", "p (Holm)", "units", "verdict"):
        table.add_column(col, justify="right" if col in ("difference", "p (Holm)", "units") else "left")
    metrics, tags = {}, {"layersearch.reference": str(reference.mapping)}
    for c, (_, ev) in zip(comparisons, others, strict=True):
        e = c.estimate
        style = {"better": "green", "worse": "red"}.get(c.verdict, "yellow")
        table.add_row(c.label, str(ev.mapping), f"{e.mean:+.4f}", f"[{e.low:+.4f}, {e.high:+.4f}]",
                      f"{c.p_adjusted:.3g}", str(e.units), f"[{style}]{c.verdict}[/]")
        name = metric_name(ev.genes)
        metrics.update({f"diff/{name}": e.mean, f"diff_ci_low/{name}": e.low, f"diff_ci_high/{name}": e.high,
                        f"p_holm/{name}": c.p_adjusted})
        tags[f"verdict/{name}"] = c.verdict
    for label, ev in [(comparisons[0].reference, reference), *others]:
        if gains and label in gains:
            name = metric_name(ev.genes)
            g = gains[label]
            tags[f"distillation_gain/{name}"] = gain_word(g)
            metrics.update({f"gain/{name}": g.mean, f"gain_ci_low/{name}": g.low, f"gain_ci_high/{name}": g.high})
    console.print(table)
    for c in comparisons:
        console.print(c.text(), highlight=False, soft_wrap=True)
    if any(not c.estimate.about_the_mapping for c in comparisons):
        console.print("[yellow]one distillation run per mapping: each difference is about these students, "
                      "not their mappings (the spread between distillation runs is not measured), so no "
                      "verdict is given; add proxy slices, e.g. --set 'proxy.slice_seeds=[0,1]'[/]")
    elif any(not c.estimate.seed_noise_measured for c in comparisons):
        console.print("[yellow]one unit per mapping: seed noise is not measured, so nothing is called "
                      "better or worse; add seeds, e.g. --set 'tasks.finetune.seeds=[0,1,2]'[/]")
    if cfg is not None:
        from layersearch.fidelity import config_fidelity_text, fidelity_tag

        steps = cfg.proxy.train.max_steps
        budget = f"{steps} distillation step(s)" if steps is not None else "the proxy's token budget"
        console.print(f"these verdicts rank proxy students ({budget}, {cfg.tasks.readout} readout); "
                      f"{config_fidelity_text(cfg)}", highlight=False, soft_wrap=True)
        tags["proxy_fidelity"] = fidelity_tag(cfg)
    tracker.log_metrics(run_id, metrics)
    tracker.set_tags(run_id, tags)
    tracker.log_dict(run_id, [c.to_dict() for c in comparisons], "comparisons.json")


@user_errors
def compare(config: ConfigArg, mapping: MappingsOpt, no_cache: NoCacheOpt = False, set_: SetOpt = None) -> None:
    """Paired comparison of mappings against the first one: difference, 95% interval, verdict."""
    from layersearch.cli.confirm import distinct
    from layersearch.fitness import compare as paired
    from layersearch.models import load_teacher_config
    from layersearch.resolve import resolve_any_mapping
    from layersearch.tracking import Tracker

    cfg = load(config, set_)
    n = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
    mappings = [resolve_any_mapping(spec, cfg, n) for spec in mapping]
    if len(mappings) < 2:
        raise UserError("compare needs at least two mappings: -m REFERENCE -m OTHER [-m ...]")
    distinct(list(mapping), mappings)
    tracker = Tracker(cfg.tracking)
    with tracker.run(f"compare {' '.join(mapping)}", tags={"layersearch.kind": "compare"}) as run_id:
        tracker.log_params(run_id, {"reference": str(mappings[0]), "mappings": [str(m) for m in mappings],
                                    "tasks.finetune.seeds": cfg.tasks.finetune.seeds,
                                    "proxy.slice_seeds": cfg.proxy.slice_seeds})
        results, gains = evaluate_all(cfg, mappings, list(mapping), use_cache=not no_cache, parent_id=run_id,
                                      tracker=tracker)
        comparisons = paired(results[0], results[1:], cfg.tasks.scored, cfg.tasks.scored_weights)
        report(tracker, run_id, comparisons, results[0][1], results[1:], gains, cfg=cfg)
    console.print(f"comparison run {run_id}")
