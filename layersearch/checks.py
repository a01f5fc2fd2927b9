"""Checks of a schema-valid config against the world: teacher, files, shapes.

Schema checks live in config.py; these need the teacher's config and the
file system, so they run once at the door of every command, before any work.
"""

from __future__ import annotations

import copy
from pathlib import Path

from layersearch.config import Config, ConfigError
from layersearch.data.tasks import TASKS
from layersearch.errors import UserError
from layersearch.models import ModelError, has_mlm_head, load_teacher_config, student_config

# WikiText from the Hub, where a config's local corpus is absent (the Makefile's quickstart uses it):
# WikiText-2's train split (2M words, a 6 MB download) holds more blocks than the quickstart reads.
HUB_CORPUS_SETS = "--set corpus.paths=null --set 'corpus.hub={name: Salesforce/wikitext, config: wikitext-2-raw-v1}'"


def environment_problems(cfg: Config) -> list[str]:
    problems: list[str] = []
    try:
        teacher = load_teacher_config(cfg.teacher.model, cfg.teacher.revision)
    except ModelError as exc:
        problems.append(str(exc))
        teacher = None
    if teacher is not None:
        try:
            student = student_config(teacher, cfg.student)
        except ModelError as exc:
            problems.append(str(exc))
        else:
            problems += shape_problems(cfg, teacher, student)
        n, m = teacher.num_hidden_layers, cfg.student.num_layers
        layers = cfg.proxy.init_layers
        if isinstance(layers, list) and (len(layers) != m or max(layers) > n):
            problems.append(f"proxy.init_layers: {layers} must list {m} teacher layers in 1..{n}")
        if layers in ("lower", "upper") and m > n:
            problems.append(f"proxy.init_layers: '{layers}' needs a student no deeper than the teacher")
        if cfg.objective.terms.get("logit_kd", 0) > 0 and not has_mlm_head(teacher):
            problems.append(
                "objective.terms.logit_kd: the teacher has no MLM head, so there are no "
                "logits to distil; drop logit_kd or use a teacher with a masked-LM head"
            )
    for i, entry in enumerate(cfg.corpus.paths or []):
        if not Path(entry).expanduser().exists():
            problems.append(f"corpus.paths.{i}: {entry} not found; put plain-text or WikiText .tokens files there, "
                            f"or read the corpus from the Hugging Face Hub: {HUB_CORPUS_SETS}")
    if cfg.tasks.source != "hub":
        root = Path(cfg.tasks.source).expanduser()
        if not root.is_dir():
            problems.append(f"tasks.source: folder {root} not found; put GLUE's TSV files there "
                            f"({root}/<task>/train.tsv and dev.tsv, for {', '.join(cfg.tasks.names)}), "
                            "or read GLUE from the Hugging Face Hub: --set tasks.source=hub")
        else:
            for name in cfg.tasks.names:
                if TASKS[name].local_columns is None:
                    problems.append(f"tasks.names: '{name}' loads only from the hub")
                    continue
                for split in ("train", "dev"):
                    if not (root / name / f"{split}.tsv").is_file():
                        problems.append(f"tasks.source: {root / name / split}.tsv not found")
    return problems


def shape_problems(cfg: Config, teacher, student) -> list[str]:
    """What the init and the objectives would reject at the start of training, found now.

    Both are asked themselves (the init's width check, the loss module's constructor
    along the uniform mapping), so these checks cannot drift from what training does.
    """
    from layersearch.init import check_width
    from layersearch.losses import DistillLoss
    from layersearch.mapping import heuristic

    problems: list[str] = []
    method = cfg.student.init.method
    if method != "random":
        try:
            check_width(student, teacher, method, exact=method == "copy")
        except UserError as exc:
            problems.append(str(exc))
    # WID distils its teacher-wide compactor model, which has the teacher's heads.
    side = student
    if method == "wid":
        side = copy.deepcopy(teacher)
        side.num_hidden_layers = student.num_hidden_layers
    mapping = heuristic("uniform", student.num_hidden_layers, teacher.num_hidden_layers)
    try:
        DistillLoss(cfg.objective, mapping, side, teacher)
    except UserError as exc:
        problems.append(str(exc))
    return problems


def check(cfg: Config) -> Config:
    """Raise ConfigError listing every environment problem, else return cfg."""
    problems = environment_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg
