"""What a search hands over: the winner, its verdict against uniform, its distillation gain,
and ``best_mapping.json`` on the parent run.

The winner is the best mean among the mappings that reached the top rung
(selection.choose_winner). It is compared with TinyBERT's uniform mapping,
paired, Holm-corrected over every mapping at the top rung (it was picked
among them on the same units); where uniform itself wins, the runner-up is
compared with it instead, to say how clear the win is. The exported mapping
carries the init its proxy students had, so ``distill`` builds the student
the search measured.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from layersearch.config import Config
from layersearch.fitness import Evaluation, compare, search_device, summarize, unit_key
from layersearch.fitness.aggregate import gain_word
from layersearch.mapping import Mapping
from layersearch.search.cache import EvaluationCache
from layersearch.search.progress import Progress
from layersearch.search.runs import SearchRuns
from layersearch.search.scorer import RungScorer
from layersearch.search.selection import choose_winner

# What the winner's exported intervals are (fitness_ci, versus_uniform, the winner_minus_uniform metrics).
RAW_INTERVALS = ("raw: not adjusted for choosing the winner on these units (upward-biased); "
                 "the verdict's p is Holm-corrected over the finalists")


class Export:
    def __init__(self, cfg: Config, scorer: RungScorer, runs: SearchRuns, num_student_layers: int,
                 num_teacher_layers: int, progress: Progress, on_event: Callable):
        self.cfg, self.scorer, self.runs = cfg, scorer, runs
        self.m, self.n = num_student_layers, num_teacher_layers
        self.progress, self.on_event = progress, on_event
        self.gain = None  # the winner's distillation gain over its init (a stats.Estimate), if measured
        self.runner_up = None  # where uniform itself wins: the runner-up against it (a fitness.Comparison)

    @property
    def tracker(self):
        return self.runs.tracker

    def uniform(self) -> Mapping:
        return self.scorer.space.uniform()

    def winner(self, exclude: str | None = None) -> Mapping | None:
        """The best mean among the mappings that reached the top rung (other than ``exclude``)."""
        best = choose_winner({k: v for k, v in self.scorer.top_means().items() if k != exclude})
        return None if best is None else Mapping.from_key(best)

    def finish(self, parent: str, mapping: Mapping | None) -> tuple[Evaluation | None, object]:
        """Log the winner and its paired comparison with uniform; returns both."""
        from layersearch.mapping import save_mapping

        if mapping is None:
            return None, None
        ev = self.evaluation_of(mapping)
        versus = self.versus_uniform(ev)
        extra = {}
        if ev is not None and ev.fitness_ci_low is not None:
            # The winner was chosen for a high score on these same units, so its interval and its
            # difference from uniform are raw: upward-biased, and said so wherever they go.
            extra.update(fitness_ci=[ev.fitness_ci_low, ev.fitness_ci_high], fitness_seeds=ev.fitness_seeds,
                         intervals=RAW_INTERVALS)
            self.tracker.set_tags(parent, {"layersearch.winner_intervals": RAW_INTERVALS})
        # The margin every verdict of this search is at (δ, in the readout's units).
        self.tracker.set_tags(parent, {"layersearch.margin": self.cfg.tasks.delta})
        if mapping == self.uniform():
            # Nothing beat uniform: the winner is uniform itself, a difference of 0 by definition.
            extra.update(verdict="indistinguishable", winner_is_uniform=True)
            self.tracker.set_tags(parent, {"verdict": "indistinguishable", "layersearch.winner_is_uniform": True})
            self.tracker.log_metrics(parent, {"winner_minus_uniform": 0.0, "winner_minus_uniform_ci_low": 0.0,
                                              "winner_minus_uniform_ci_high": 0.0})
            # How clear the win is: the runner-up against uniform, paired and Holm-corrected over the
            # same family, as a verdict would be; its plot stands where the verdict's would.
            runner = self.winner(exclude=mapping.key)
            runner_ev = self.evaluation_of(runner) if runner is not None else None
            self.runner_up = self.versus_uniform(runner_ev)
            if self.runner_up is not None:
                extra["runner_up_versus_uniform"] = self.runner_up.to_dict()
                self.tracker.set_tags(parent, {"layersearch.runner_up": str(runner),
                                               "layersearch.runner_up_verdict": self.runner_up.verdict})
                self.log_verdict_plot(parent, runner_ev, self.runner_up, "Runner-up")
        else:
            extra["verdict"] = versus.verdict if versus is not None else "no comparison"
        if versus is not None:
            extra["versus_uniform"] = versus.to_dict()
            e = versus.estimate
            self.tracker.set_tags(parent, {"verdict": versus.verdict})
            self.tracker.log_metrics(parent, {"winner_minus_uniform": e.mean, "winner_minus_uniform_ci_low": e.low,
                                              "winner_minus_uniform_ci_high": e.high})
            self.log_verdict_plot(parent, ev, versus)
        gain = self.gain = self.distillation_gain(parent, ev)
        if gain is not None:
            extra["distillation_gain"] = {"word": gain_word(gain), **gain.to_dict()}
        saved = self.with_proxy_init(mapping)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_mapping(saved, Path(tmp) / "best_mapping.json", self.cfg.teacher.model,
                                sorted(self.cfg.objective.terms), fitness=ev.fitness if ev else None,
                                scores=ev.scores if ev else {}, search_run_id=parent,
                                spec_key=self.scorer.spec, **extra)
            self.tracker.log_artifact(parent, path)
        self.tracker.set_tags(parent, {"layersearch.best_mapping": mapping.key,
                                       "layersearch.best_genes": str(mapping)})
        metrics = {"best_fitness": ev.fitness} if ev is not None and ev.fitness is not None else {}
        if "fitness_ci" in extra:
            metrics.update(best_fitness_ci_low=extra["fitness_ci"][0], best_fitness_ci_high=extra["fitness_ci"][1])
        self.tracker.log_metrics(parent, metrics)
        return ev, versus

    def log_verdict_plot(self, parent: str, best: Evaluation, versus, role: str = "Winner") -> None:
        """``verdict.png`` on the search run: the winner's and uniform's units, paired, and the
        paired difference with its interval against zero."""
        from layersearch import plots
        from layersearch.fitness.aggregate import unit_fitness

        ref = self.evaluation_of(self.uniform())
        names, weights = self.cfg.tasks.scored, self.cfg.tasks.scored_weights
        e = versus.estimate
        with tempfile.TemporaryDirectory() as tmp:
            self.tracker.log_artifact(parent, plots.verdict(
                unit_fitness(best, names, weights), unit_fitness(ref, names, weights), (e.mean, e.low, e.high),
                versus.verdict, str(best.mapping), Path(tmp) / "verdict.png", role), "plots")

    def distillation_gain(self, parent: str, best: Evaluation | None):
        """The winner's distillation gain over its untouched init (``tasks.init_baseline``): the
        init's evaluation is cached under the init spec key and logged as a child run; the parent
        run gets tag ``distillation_gain`` (positive / none / negative) and metrics ``gain*``."""
        from layersearch.fitness import init_spec_key
        from layersearch.fitness.baseline import attach_gains, baseline_run
        from layersearch.init import init_identity, proxy_init_config

        if not self.cfg.tasks.init_baseline or best is None or not best.ok or not best.units:
            return None
        cache = EvaluationCache(self.cfg.search.cache_dir, init_spec_key(self.cfg, search_device(self.cfg)))
        ident = init_identity(proxy_init_config(self.cfg), best.mapping)

        def run_init(prior):
            return self.scorer.open_pool().evaluate_init(best.mapping, prior)

        def say(text: str) -> None:
            self.on_event("warning", self.progress, {"message": text})

        try:
            init = baseline_run(cache, ident, self.scorer.units, self.cfg.tasks, run_init, self.tracker, parent,
                                say=lambda text: None)
            gains = attach_gains(self.cfg.tasks, [("winner", best)], [parent], lambda _: init, self.tracker, say)
        except Exception as exc:  # the verdict stands without it; say why it is missing
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            say(f"no init baseline for the winner: {first}")
            return None
        return gains.get("winner")

    def with_proxy_init(self, mapping: Mapping) -> Mapping:
        """The winner as it was scored: with the init layers its proxy students had, so
        ``distill`` builds the student the search measured."""
        from layersearch.init import proxy_init_config, seed_layers

        if mapping.init is not None or self.cfg.student.init.method == "random":
            return mapping
        return mapping.with_init(seed_layers(proxy_init_config(self.cfg), mapping, self.m, self.n))

    def evaluation_of(self, mapping: Mapping) -> Evaluation | None:
        """This search's record of ``mapping`` over every unit: this process, the cache, or its child run."""
        from layersearch.tracking import load_evaluation

        wanted = [unit_key(s, f) for s, f in self.scorer.units]
        ev = self.scorer.stored(mapping)
        children = self.runs.children
        if (ev is None or ev.missing(wanted)) and mapping.key in children:  # resumed with another cache_dir
            ev = load_evaluation(self.tracker, children[mapping.key][0])
        if ev is None or ev.missing(wanted):
            return None
        return summarize(ev.restricted(wanted), self.cfg.tasks.scored, self.cfg.tasks.scored_weights)

    def versus_uniform(self, best: Evaluation | None):
        """The winner minus TinyBERT's uniform mapping, paired, when the search evaluated both.

        The winner was chosen as the best of every mapping that reached the top
        rung, on these same seeds, so its test is one of a family: Holm runs over
        all of them against uniform, which keeps "better" honest after the
        selection (the difference itself still carries the winner's luck).
        """
        from layersearch.fitness import PairingError

        if best is None or not best.units:
            return None
        uniform = self.uniform()
        if uniform == best.mapping:
            return None
        ref = self.evaluation_of(uniform)
        if ref is None or not ref.ok or not ref.units:
            return None
        family = []
        for key in sorted(self.scorer.known()):
            if key in (uniform.key, best.mapping.key):
                continue
            ev = self.evaluation_of(Mapping.from_key(key))
            if ev is not None and ev.ok and ev.units:
                family.append((str(ev.mapping), ev))
        try:
            comparisons = compare(("uniform", ref), [(str(best.mapping), best), *family],
                                  self.cfg.tasks.scored, self.cfg.tasks.scored_weights, margin=self.cfg.tasks.delta)
        except PairingError as exc:  # e.g. evaluators that disagreed on the spec
            self.on_event("warning", self.progress, {"message": f"no verdict against uniform: {exc}"})
            return None
        return comparisons[0]
