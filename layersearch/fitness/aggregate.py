"""From an evaluation's units to its summary, and from two evaluations to a verdict.

``summarize`` fills an ``Evaluation``'s fitness, interval and per-task scores
from its units; ``compare`` pairs a reference with other mappings under the
same proxy spec (same slices, fine-tune seeds and dev examples), Holm-corrects
the tests and names a verdict for each. The arithmetic is in ``stats``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from layersearch.errors import UserError
from layersearch.fitness.record import Evaluation, unpack_labels
from layersearch.fitness.stats import Estimate, family_verdicts, fitness_estimate, paired_difference, task_score


class PairingError(UserError):
    """Two evaluations that cannot be compared example by example and seed by seed."""


def unit_order(ev: Evaluation) -> list[str]:
    return sorted(ev.units, key=lambda u: (ev.units[u]["slice_seed"], ev.units[u]["finetune_seed"]))


def task_weights(names: list[str], weights: list[float] | None) -> dict[str, float]:
    return dict(zip(names, weights or [1.0] * len(names), strict=True))


def summarize(ev: Evaluation, names: list[str], weights: list[float] | None = None) -> Evaluation:
    """Derive fitness, its interval and per-task scores from the units (in place; returns ``ev``)."""
    if not ev.ok or not ev.units:
        return ev
    units = unit_order(ev)
    labels = {t: unpack_labels(ev.dev_labels[t]) for t in names}
    preds = {t: ev.predictions(t, units) for t in names}
    est = fitness_estimate(preds, labels, task_weights(names, weights),
                           groups=[ev.units[u]["slice_seed"] for u in units])
    per_task = task_scores(ev, names)
    per_unit = list(unit_fitness(ev, names, weights, per_task).values())
    ev.fitness, ev.fitness_ci_low, ev.fitness_ci_high = est.mean, est.low, est.high
    ev.fitness_seeds = len(units)
    ev.fitness_std = statistics.stdev(per_unit) if len(per_unit) > 1 else 0.0
    ev.scores = {t: statistics.fmean(v) for t, v in per_task.items()}
    ev.scores_std = {t: statistics.stdev(v) if len(v) > 1 else 0.0 for t, v in per_task.items()}
    ev.metrics = {}
    for t in names:
        for metric in ev.units[units[0]]["tasks"][t]["metrics"]:
            ev.metrics[f"{t}/{metric}"] = statistics.fmean(ev.units[u]["tasks"][t]["metrics"][metric]
                                                           for u in units)
    return ev


def interval_text(ev: Evaluation) -> str:
    """``0.4123 ± 0.0310 (3 units)``: the mean, the 95% interval's half-width and the evidence.

    A unit is one proxy slice x one fine-tune seed (one slice alone for a deterministic
    readout), so the count is in units, whatever the readout."""
    return format_interval(ev.fitness, ev.fitness_ci_low, ev.fitness_ci_high, ev.fitness_seeds)


def format_interval(fitness: float | None, low: float | None, high: float | None, seeds: int) -> str:
    """``interval_text`` from its numbers (an MLflow run's metrics, say)."""
    if fitness is None:
        return "-"
    if low is None or high is None:
        return f"{fitness:.4f}"
    half = (high - low) / 2
    if seeds == 1:  # the noise between units is not measured: the interval is the dev set's alone
        return f"{fitness:.4f} ± {half:.4f} (1 unit, dev set only)"
    return f"{fitness:.4f} ± {half:.4f} ({seeds} units)"


@dataclass
class Comparison:
    label: str  # the other mapping
    reference: str
    estimate: Estimate  # other minus reference
    p_adjusted: float  # Holm across the comparisons made together, of "beyond ±margin"
    verdict: str
    margin: float  # δ: the smallest difference the verdict calls better or worse

    def to_dict(self) -> dict:
        return {"label": self.label, "reference": self.reference, **self.estimate.to_dict(),
                "p_adjusted": self.p_adjusted, "margin": self.margin, "verdict": self.verdict}

    def text(self) -> str:
        e = self.estimate
        if not e.about_the_mapping:  # one distillation run each: a fact about these two students
            return (f"{self.label} vs {self.reference}: {e.mean:+.4f} [{e.low:+.4f}, {e.high:+.4f}] for this "
                    f"student ({e.units} paired units, 1 distillation run each), δ {self.margin:.4f} "
                    f"-> {self.verdict}")
        return (f"{self.label} vs {self.reference}: {e.mean:+.4f} [{e.low:+.4f}, {e.high:+.4f}], "
                f"δ {self.margin:.4f}, p = {self.p_adjusted:.3g} (Holm, beyond ±δ; {e.units} paired units, "
                f"{e.distillation_runs} distillation runs) -> {self.verdict}")


def _paired(ref: Evaluation, other: Evaluation, names: list[str], same_spec: bool = True) -> list[str]:
    """The units ``ref`` and ``other`` share, in ``ref``'s order, after checking they can be paired.
    ``same_spec=False`` pairs a student with its init, whose records have a spec key of their own."""
    if same_spec and ref.spec_key != other.spec_key:
        raise PairingError(f"{other.mapping} and {ref.mapping} were evaluated under different proxy "
                           f"specs ({other.spec_key} vs {ref.spec_key}); evaluate both with one config")
    for ev in (ref, other):
        if not ev.ok:
            raise PairingError(f"{ev.mapping} has no fitness to compare ({ev.status})")
        if not ev.units:
            raise PairingError(f"{ev.mapping} has no per-seed results to pair (an old or external record)")
    units = [u for u in unit_order(ref) if u in other.units]
    if not units:
        raise PairingError(f"{other.mapping} and {ref.mapping} share no (slice, fine-tune seed) unit")
    for t in names:
        if ref.dev_labels.get(t) != other.dev_labels.get(t):
            raise PairingError(f"{t}: {other.mapping} and {ref.mapping} were scored on different dev examples")
    return units


def compare(reference: tuple[str, Evaluation], others: list[tuple[str, Evaluation]], names: list[str],
            weights: list[float] | None = None, *, margin: float) -> list[Comparison]:
    """Each other mapping minus the reference, paired, Holm-corrected across ``others``, with a
    verdict at margin δ (``margin``, the tasks section's ``delta``)."""
    ref_label, ref = reference
    w = task_weights(names, weights)
    labels = {t: unpack_labels(ref.dev_labels[t]) for t in names}
    estimates = []
    for _, ev in others:
        units = _paired(ref, ev, names)
        estimates.append(paired_difference(
            {t: ref.predictions(t, units) for t in names}, {t: ev.predictions(t, units) for t in names},
            labels, w, groups=[ref.units[u]["slice_seed"] for u in units]))
    return [Comparison(label, ref_label, e, p, word, margin) for (label, _), e, (p, word)
            in zip(others, estimates, family_verdicts(estimates, margin=margin), strict=True)]


THIS_STUDENT = "this student"  # one distillation run: the gain is about this student, not the mapping
GAIN_WORDS = ("positive", "none", "negative", THIS_STUDENT)


def distillation_gain(after: Evaluation, init: Evaluation, names: list[str],
                      weights: list[float] | None = None) -> Estimate:
    """``after`` minus its untouched ``init``, paired by unit and dev example.

    The init was fine-tuned with the same seeds on the same dev examples (its
    units carry the same keys), so shared seed luck cancels as in ``compare``.
    """
    units = _paired(after, init, names, same_spec=False)
    labels = {t: unpack_labels(after.dev_labels[t]) for t in names}
    return paired_difference({t: init.predictions(t, units) for t in names},
                             {t: after.predictions(t, units) for t in names}, labels,
                             task_weights(names, weights), groups=[after.units[u]["slice_seed"] for u in units])


def gain_word(gain: Estimate) -> str:
    """``positive`` or ``negative`` where the 95% interval excludes 0, else ``none``; with one
    distillation run, ``this student``: as for a verdict, the interval then holds one student's
    dev-set (and fine-tune) noise, not the spread between runs, so it says nothing of the mapping."""
    if not gain.about_the_mapping:
        return THIS_STUDENT
    if gain.low > 0:
        return "positive"
    if gain.high < 0:
        return "negative"
    return "none"


def gain_text(gain: Estimate) -> str:
    word = gain_word(gain)
    text = f"distillation gain {gain.mean:+.4f} [{gain.low:+.4f}, {gain.high:+.4f}] -> {word}"
    if word == THIS_STUDENT:
        return text + (" (1 distillation run: the interval holds this student's noise, not the spread "
                       "between runs; 2 or more proxy slices, e.g. --set 'proxy.slice_seeds=[0,1]', say "
                       "whether distillation helps this mapping)")
    if word != "positive":
        text += " (no better than the untouched init: this fitness measures the init, not the mapping)"
    return text


def task_scores(ev: Evaluation, names: list[str]) -> dict[str, list[float]]:
    """Each task's chance-corrected score per unit, units in ``unit_order``."""
    units = unit_order(ev)
    labels = {t: unpack_labels(ev.dev_labels[t]) for t in names}
    return {t: [task_score(row, labels[t]) for row in ev.predictions(t, units)] for t in names}


def unit_fitness(ev: Evaluation, names: list[str], weights: list[float] | None = None,
                 scores: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Each unit's fitness, by unit key; ``scores`` are ``task_scores`` if already at hand."""
    w = task_weights(names, weights)
    total = sum(w.values())
    scores = scores or task_scores(ev, names)
    return {u: sum(w[t] * scores[t][i] for t in names) / total for i, u in enumerate(unit_order(ev))}
