"""Paired verdicts of mappings against the first one: ``compare`` (proxy) and the records they leave.

Every mapping is evaluated under one proxy spec (the same slices, fine-tune
seeds and dev examples), so each difference with the reference is paired by
seed and by dev example. For each other mapping: the difference with a 95%
interval, a Holm-corrected p-value and one word: better, worse or
indistinguishable. The comparison is an MLflow run, with the evaluations
nested under it and the verdicts as tags and metrics.
"""

from __future__ import annotations

import re

from layersearch.config import Config
from layersearch.errors import UserError
from layersearch.workflows.progress import Say
from layersearch.workflows.results import Verdicts

_KEY_SAFE = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_name(genes) -> str:
    """A mapping as MLflow accepts in a metric or tag name (no commas or brackets)."""
    return _KEY_SAFE.sub("-", "-".join(str(g) for g in genes))


def distinct(labels: list[str], mappings: list) -> None:
    """Each mapping named once: a verdict of a mapping against itself says nothing."""
    seen = {}
    for label, m in zip(labels, mappings, strict=True):
        if m in seen:
            raise UserError(f"-m {label} and -m {seen[m]} are the same mapping {m}; name each mapping once")
        seen[m] = label


def compare(cfg: Config, mappings: list[str], use_cache: bool = True, say: Say | None = None) -> Verdicts:
    """Proxy fitness of each mapping, and each against the first: difference, 95% interval, verdict."""
    from layersearch.fitness import compare as paired
    from layersearch.tracking import Tracker
    from layersearch.workflows.evaluate import evaluate_all, resolve_mappings

    specs = list(mappings)
    resolved = resolve_mappings(cfg, specs)
    if len(resolved) < 2:
        raise UserError("compare needs at least two mappings: -m REFERENCE -m OTHER [-m ...]")
    distinct(specs, resolved)
    tracker = Tracker(cfg.tracking)
    with tracker.run(f"compare {' '.join(specs)}", tags={"layersearch.kind": "compare"}) as run_id:
        tracker.log_params(run_id, {"reference": str(resolved[0]), "mappings": [str(m) for m in resolved],
                                    "tasks.finetune.seeds": cfg.tasks.finetune.seeds,
                                    "proxy.slice_seeds": cfg.proxy.slice_seeds})
        evaluated = evaluate_all(cfg, resolved, specs, use_cache=use_cache, parent_id=run_id, tracker=tracker,
                                 say=say)
        results = evaluated.evaluations
        comparisons = paired(results[0], results[1:], cfg.tasks.scored, cfg.tasks.scored_weights,
                             margin=cfg.tasks.delta)
        notes = record_verdicts(tracker, run_id, comparisons, results[0][1], results[1:], evaluated.gains, cfg=cfg)
    return Verdicts(run_id, evaluated, comparisons, notes)


def record_verdicts(tracker, run_id: str, comparisons: list, reference, others: list, gains: dict | None = None,
                    cfg=None) -> list[str]:
    """Record the verdicts on ``run_id`` (tags, metrics, comparisons.json); ``gains`` (label ->
    distillation gain) become ``distillation_gain/<genes>`` tags. With the proxy's ``cfg``, what is
    known of the proxy's agreement with final students tags the run ``proxy_fidelity``.

    Returns the notes that limit the verdicts, in words, to be shown under them.
    """
    from layersearch.fitness.aggregate import gain_word

    metrics, tags = {}, {"layersearch.reference": str(reference.mapping)}
    if comparisons:  # δ, the margin every verdict here is at (in the readout's units)
        tags["layersearch.margin"] = comparisons[0].margin
    for c, (_, ev) in zip(comparisons, others, strict=True):
        e = c.estimate
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
    notes = []
    if any(not c.estimate.about_the_mapping for c in comparisons):
        notes.append("one distillation run per mapping: each difference is about these students, "
                     "not their mappings (the spread between distillation runs is not measured), so no "
                     "verdict is given; add proxy slices, e.g. --set 'proxy.slice_seeds=[0,1]'")
    elif any(not c.estimate.seed_noise_measured for c in comparisons):
        notes.append("one unit per mapping: seed noise is not measured, so nothing is called "
                     "better or worse; add seeds, e.g. --set 'tasks.finetune.seeds=[0,1,2]'")
    if cfg is not None:
        from layersearch.fidelity import config_fidelity_text, fidelity_tag

        steps = cfg.proxy.train.max_steps
        budget = f"{steps} distillation step(s)" if steps is not None else "the proxy's token budget"
        notes.append(f"these verdicts rank proxy students ({budget}, {cfg.tasks.readout} readout); "
                     f"{config_fidelity_text(cfg)}")
        tags["proxy_fidelity"] = fidelity_tag(cfg)
    tracker.log_metrics(run_id, metrics)
    tracker.set_tags(run_id, tags)
    tracker.log_dict(run_id, [c.to_dict() for c in comparisons], "comparisons.json")
    return notes
