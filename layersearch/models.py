"""Teacher loading and student shape.

The teacher is an encoder of a supported family (``layersearch.families``:
BERT and its MiniLM/bge/e5/gte checkpoints, RoBERTa, XLM-R, ELECTRA, MPNet,
DistilBERT) that ``transformers`` can load: a hub id, a local directory, or an
offline short name (``layersearch.offline``). The student's config is the
teacher's with depth and width overridden, so it stays in the teacher's family.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PretrainedConfig,
)

from layersearch.config import Config, StudentConfig
from layersearch.errors import UserError
from layersearch.families import FamilyError, adapter_for
from layersearch.offline import OFFLINE_TEACHERS, offline_teacher_dir

_MLM_ARCH_SUFFIXES = ("ForMaskedLM", "ForPreTraining")


class ModelError(UserError):
    """A teacher that cannot be resolved or a student shape that cannot be built."""


def resolve_teacher(name: str) -> str:
    """Map a teacher name to something ``from_pretrained`` accepts."""
    if name.startswith("offline:"):
        short = name.removeprefix("offline:")
        if short not in OFFLINE_TEACHERS:
            raise ModelError(
                f"teacher.model: unknown offline teacher '{short}'; known: {sorted(OFFLINE_TEACHERS)}"
            )
        return str(offline_teacher_dir(short))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"teacher.model: directory {path} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ModelError(f"teacher.model: directory {name} not found")
    return name  # a hub id


def load_teacher_config(name: str, revision: str | None = None) -> PretrainedConfig:
    """The teacher's config, checked to be of a family with an adapter."""
    try:
        config = AutoConfig.from_pretrained(resolve_teacher(name), revision=revision)
    except ModelError:
        raise
    except UserError as exc:  # a missing or damaged offline part
        raise ModelError(str(exc)) from None
    except Exception as exc:  # hub unreachable, repo missing, bad JSON ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"teacher.model: cannot load config of '{name}': {first}") from None
    try:
        adapter_for(config)
    except FamilyError as exc:
        raise ModelError(f"{exc} ('{name}')") from None
    return config


def has_mlm_head(config: PretrainedConfig) -> bool:
    return any(a.endswith(_MLM_ARCH_SUFFIXES) for a in (config.architectures or []))


def load_teacher(
    name: str, revision: str | None = None, attentions: bool = True, mlm_head: bool = False
) -> torch.nn.Module:
    """Load the frozen teacher in eval mode.

    ``attentions`` selects eager attention, the only implementation that
    returns attention maps in transformers 5; otherwise SDPA is kept.
    ``mlm_head`` loads the masked-LM model (for logit KD) where the checkpoint
    has one.
    """
    source = resolve_teacher(name)
    config = load_teacher_config(name, revision)
    cls = AutoModelForMaskedLM if mlm_head and has_mlm_head(config) else AutoModel
    adapter = adapter_for(config)
    kwargs = {"attn_implementation": "eager"} if attentions else {}
    if "sdpa" not in adapter.attention_kernels:  # its own kernel only (MPNet)
        kwargs = {"attn_implementation": adapter.kernel("eager")}
    model = cls.from_pretrained(source, revision=revision, **kwargs)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def wants_mlm_head(cfg: Config) -> bool:
    """Whether the config's objective reads the teacher's MLM head: logit KD, or WID on MLM."""
    wid_mlm = cfg.student.init.method == "wid" and cfg.student.init.wid.objective == "mlm"
    return cfg.objective.terms.get("logit_kd", 0) > 0 or wid_mlm


def load_teacher_for(cfg: Config, attentions: bool = False) -> torch.nn.Module:
    """The teacher as search and distillation both load it: the config alone picks the head.

    One loader, so a proxy evaluation and the final distillation of the same
    config train against the same teacher, with the same objective.
    """
    mlm = wants_mlm_head(cfg)
    if mlm and cfg.objective.terms.get("logit_kd", 0) <= 0:
        config = load_teacher_config(cfg.teacher.model, cfg.teacher.revision)
        if not has_mlm_head(config):
            raise ModelError(
                f"student.init.wid.objective: 'mlm' needs a teacher with a masked-LM head and "
                f"'{cfg.teacher.model}' has none; use 'distill'"
            )
    return load_teacher(cfg.teacher.model, cfg.teacher.revision, attentions=attentions,
                        mlm_head=mlm)


def load_tokenizer(name: str, revision: str | None = None):
    return AutoTokenizer.from_pretrained(resolve_teacher(name), revision=revision)


def student_config(teacher: PretrainedConfig, student: StudentConfig) -> PretrainedConfig:
    """Derive the student's config from the teacher's, checking the shape.

    Width can shrink but not grow when weights come from the teacher, since
    copy/ETD/WID initialisations extract a sub-network; the student's head size
    is hidden / heads, whole but not necessarily the teacher's.
    """
    adapter = adapter_for(teacher)
    t = adapter.dims(teacher)
    n_teacher = t.layers
    if student.num_layers > n_teacher:
        raise ModelError(
            f"student.num_layers: {student.num_layers} is deeper than the teacher ({n_teacher} layers)"
        )
    hidden = student.hidden_size or t.hidden
    heads = student.num_attention_heads or t.heads
    ffn = student.intermediate_size or t.ffn
    if hidden % heads:
        raise ModelError(
            f"student.num_attention_heads: {heads} heads do not divide hidden_size {hidden}"
        )
    if student.init.method != "random":
        for key, value, limit in (
            ("hidden_size", hidden, t.hidden),
            ("intermediate_size", ffn, t.ffn),
            ("num_attention_heads", heads, t.heads),
        ):
            if value > limit:
                raise ModelError(
                    f"student.{key}: {value} exceeds the teacher's {limit}; "
                    f"init '{student.init.method}' extracts weights from the teacher"
                )
    # ETD takes every head's dims from a teacher head: it can keep fewer heads and fewer
    # dims per head (hidden / heads, which need not be a teacher head's size: bert-base's
    # 64 -> TinyBERT's 26), but a student head cannot be wider than a teacher's. (WID's
    # own check runs when its compactor model is built; validation asks init.check_width.)
    teacher_head_dim = t.head_dim
    if student.init.method.startswith("etd") and hidden // heads > teacher_head_dim:
        raise ModelError(
            f"student.num_attention_heads: init '{student.init.method}' cuts inside teacher heads "
            f"of size {teacher_head_dim} but cannot widen them; {heads} heads make a {hidden}-wide "
            f"student's heads {hidden // heads} wide; use {fewest_heads(hidden, teacher_head_dim)} or more heads"
        )
    layers = student.init.layers
    if isinstance(layers, list):
        if len(layers) != student.num_layers:
            raise ModelError(
                f"student.init.layers: {len(layers)} layers listed for a {student.num_layers}-layer student"
            )
        if max(layers) > n_teacher:
            raise ModelError(
                f"student.init.layers: layer {max(layers)} exceeds the teacher's {n_teacher} layers"
            )
    cfg = copy.deepcopy(teacher)
    adapter.set_dims(cfg, student.num_layers, hidden, heads, ffn)
    if getattr(teacher, "embedding_size", None) == t.hidden:
        # ELECTRA with embeddings as wide as the stream: they narrow with it. A
        # narrower embedding (ELECTRA-small) keeps its width and its projection.
        cfg.embedding_size = hidden
    cfg.architectures = None
    return cfg


def fewest_heads(hidden: int, max_head_dim: int) -> int:
    """The fewest heads that split ``hidden`` into whole heads of at most ``max_head_dim``."""
    return next(h for h in range(-(-hidden // max_head_dim), hidden + 1) if hidden % h == 0)


def build_student(config: PretrainedConfig, attentions: bool = True) -> torch.nn.Module:
    """A randomly initialised student encoder from a derived config."""
    config = copy.deepcopy(config)
    # transformers 5: a model built from a config takes the attention
    # implementation from this private field (the constructor has no argument).
    config._attn_implementation = adapter_for(config).kernel("eager" if attentions else "sdpa")
    return AutoModel.from_config(config)
