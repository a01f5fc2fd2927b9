"""Student initialisation: how the student's weights start.

Strategies are registered by name (torchdistill style) so a config names them:

    report = init_student(student, teacher, cfg.student.init, mapping, batches)

- ``random``: the model's own init, reseeded so it depends only on ``cfg.seed``.
- ``copy``: embeddings and whole teacher layers (student as wide as the teacher).
- ``etd-rand`` / ``etd-impt``: Extract-then-Distill (Chen et al. 2021): keep a
  subset of hidden dimensions, attention heads and FFN neurons of the chosen
  teacher layers, chosen at random or by importance on a few corpus batches.
  Attention shrinks by whole heads when the student has fewer heads, by dims
  inside every kept head when its head size is smaller, or both (TinyBERT's
  4L-312 student keeps bert-base's 12 heads, of 26 dims instead of 64).
- ``wid`` is not an in-place init: Weight-Inherited Distillation trains a
  teacher-wide compactor model and merges it at the end, so
  ``student.make_student`` builds it through ``layersearch.wid``.

Every strategy starts from the seeded random init, so weights it does not copy
(e.g. a pooler the teacher lacks) are still fixed by the seed. Indices in the
report are 0-based tensor indices; teacher layers are 1-based as in a mapping.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn

from layersearch.config import InitConfig
from layersearch.errors import UserError
from layersearch.families import FamilyAdapter, adapter_for, copy_shared_head_tables, dims
from layersearch.mapping import Mapping, heuristic
from layersearch.models import fewest_heads

InitFn = Callable[..., dict]
INITS: dict[str, InitFn] = {}

# How ETD slices each parameter: one index kind per tensor dimension (None = keep all).
# "hidden" = kept residual dims, "ffn" = kept neurons; inside the kept heads, "qk" =
# kept query/key dims (row j of Q with row j of K: they meet in one logit term) and
# "v" = kept value dims (row j of V with column j of the attention output). The
# parameter names come from the family adapter's paths.
_ROLE_SLICES = {
    "query": ("qk", "hidden"), "key": ("qk", "hidden"), "value": ("v", "hidden"),
    "attn_out": ("hidden", "v"), "attn_norm": ("hidden",),
    "ffn_in": ("ffn", "hidden"), "ffn_out": ("hidden", "ffn"), "ffn_norm": ("hidden",),
}
_POOLER_SLICES = {"dense.weight": ("hidden", "hidden"), "dense.bias": ("hidden",)}


def layer_slices(adapter: FamilyAdapter) -> dict[str, tuple]:
    """ETD's slicing of one block's parameters, by the names the family gives them."""
    out = {}
    for role, kinds in _ROLE_SLICES.items():
        path = getattr(adapter, role)
        out[f"{path}.weight"] = kinds
        out[f"{path}.bias"] = kinds[:1]
    return out


def embedding_slices(embeddings: nn.Module, teacher_hidden: int) -> dict[str, tuple]:
    """ETD's slicing of the embeddings: tables and norm cut to the kept residual dims.

    An embedding narrower than the stream (ELECTRA-small, behind a projection) is
    not part of the residual stream, so it is copied whole.
    """
    out = {}
    for name, module in embeddings.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Embedding):
            kind = "hidden" if module.embedding_dim == teacher_hidden else None
            out[f"{prefix}weight"] = (None, kind)
        elif isinstance(module, nn.LayerNorm):
            kind = "hidden" if module.normalized_shape[-1] == teacher_hidden else None
            out[f"{prefix}weight"] = out[f"{prefix}bias"] = (kind,)
    return out


class InitError(UserError, ValueError):
    """A student that the chosen init cannot produce from this teacher."""


def register(name: str) -> Callable[[InitFn], InitFn]:
    def wrap(fn: InitFn) -> InitFn:
        INITS[name] = fn
        return fn

    return wrap


def init_student(
    student: nn.Module,
    teacher: nn.Module,
    cfg: InitConfig,
    mapping: Mapping | None,
    batches: Iterable[dict] | None = None,
) -> dict:
    """Initialise ``student`` in place by ``cfg.method``; returns a JSON-able report."""
    if cfg.method == "wid":
        raise InitError(
            "student.init.method: 'wid' is not implemented as an in-place init: it changes the "
            "student's architecture while training; build it with layersearch.student.make_student"
        )
    if cfg.method not in INITS:
        raise InitError(
            f"student.init.method: '{cfg.method}' is not implemented yet; "
            f"choose from {sorted(INITS)}"
        )
    _reseed(student, cfg.seed)
    report = INITS[cfg.method](student, teacher, cfg, mapping, batches)
    return {"method": cfg.method, "seed": cfg.seed, **report}


def seed_layers(
    cfg: InitConfig, mapping: Mapping | None, num_student: int, num_teacher: int
) -> list[int]:
    """The 1-based teacher layer that seeds each student layer.

    A mapping that names its init layers (searched as genes, or saved by a
    search with the init it was scored with) decides; otherwise ``cfg.layers``.
    """
    if mapping is not None and mapping.init is not None:
        if len(mapping.init) != num_student or max(mapping.init) > num_teacher:
            raise InitError(f"mapping init {list(mapping.init)} does not fit a {num_student}-layer student "
                            f"of a {num_teacher}-layer teacher")
        return list(mapping.init)
    layers = cfg.layers
    if isinstance(layers, list):
        if len(layers) != num_student or not all(1 <= t <= num_teacher for t in layers):
            raise InitError(
                f"student.init.layers: {layers} must list {num_student} layers in 1..{num_teacher}"
            )
        return list(layers)
    if layers != "mapping":
        return list(heuristic(layers, num_student, num_teacher).genes)
    if mapping is None or mapping.num_student_layers != num_student:
        raise InitError(f"student.init.layers: 'mapping' needs a mapping with {num_student} genes")
    # A 0 gene supervises nothing, but its student layer still needs weights.
    uniform = heuristic("uniform", num_student, num_teacher).genes
    return [g or u for g, u in zip(mapping.genes, uniform, strict=True)]


def init_identity(cfg: InitConfig, mapping: Mapping) -> Mapping:
    """The untouched init of ``mapping``'s student, named by the teacher layers it starts from.

    Students whose inits have the same name are the same model before training (the
    init is seeded by ``cfg.seed``), so their baseline evaluation is shared.
    """
    layers = seed_layers(cfg, mapping, mapping.num_student_layers, mapping.num_teacher_layers)
    return Mapping(tuple(layers), mapping.num_teacher_layers)


def proxy_init_config(cfg) -> InitConfig:
    """The student init a proxy evaluation uses: ``proxy.init_layers`` stands in for
    ``student.init.layers: mapping``, so the searched genes choose supervision only."""
    init = cfg.student.init
    if init.layers == "mapping" and cfg.proxy.init_layers != "mapping":
        init = init.model_copy(update={"layers": copy.deepcopy(cfg.proxy.init_layers)})
    return init


@register("random")
def _random(student, teacher, cfg, mapping, batches) -> dict:
    return {}  # init_student has already reseeded the student


@register("copy")
def _copy(student, teacher, cfg, mapping, batches) -> dict:
    s, t = student.config, teacher.config
    check_width(s, t, "copy", exact=True)
    adapter = adapter_for(teacher)
    layers = seed_layers(cfg, mapping, dims(s).layers, dims(t).layers)
    sb, tb = student.base_model, teacher.base_model
    # Everything outside the blocks (embeddings, ELECTRA's projection, MPNet's position
    # bias, the pooler) whole; the blocks by the seeded layers.
    prefix = f"{adapter.layers}."
    outside = {k: v for k, v in tb.state_dict().items() if not k.startswith(prefix)}
    missing, unexpected = sb.load_state_dict(outside, strict=False)
    missing = [k for k in missing if not k.startswith(prefix) and not k.startswith("pooler.")]
    if missing or unexpected:
        raise InitError(f"copy: teacher and student differ outside their layers: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    s_blocks, t_blocks = adapter.blocks(sb), adapter.blocks(tb)
    for s_layer, t_idx in zip(s_blocks, layers, strict=True):
        s_layer.load_state_dict(t_blocks[t_idx - 1].state_dict())
    return {"teacher_layers": layers}


@register("etd-rand")
def _etd_rand(student, teacher, cfg, mapping, batches) -> dict:
    t = dims(teacher.config)
    n, heads = t.layers, t.heads
    head_dim = t.head_dim
    gen = torch.Generator().manual_seed(cfg.seed)
    # Drawn in this order so that the whole-head picks of a seed stay what they were
    # before head dims could be cut.
    scores = {
        "hidden": torch.rand(t.hidden, generator=gen),
        "heads": torch.rand(n, heads, generator=gen),
        "neurons": torch.rand(n, t.ffn, generator=gen),
        "qk": torch.rand(n, heads, head_dim, generator=gen),
        "v": torch.rand(n, heads, head_dim, generator=gen),
    }
    return _extract(student, teacher, cfg, mapping, scores)


@register("etd-impt")
def _etd_impt(student, teacher, cfg, mapping, batches) -> dict:
    if batches is None:
        raise InitError(
            "student.init.method: 'etd-impt' needs corpus batches to measure importance"
        )
    scores = remembered_importance(teacher, batches, cfg.importance_batches)
    return _extract(student, teacher, cfg, mapping, scores)


# Per teacher (weakly held, so a dropped teacher frees its entries), batches' digest -> scores.
_IMPORTANCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remembered_importance(teacher: nn.Module, batches: Iterable[dict], num_batches: int) -> dict:
    """``importance``, computed once per teacher and batches in a process.

    Every candidate of a search starts from the same slice's first batches, and at
    a 12-layer teacher the forwards cost seconds per candidate; the scores depend
    only on the teacher's weights (frozen) and the batches, so they are reused.
    """
    batches = list(itertools.islice(batches, num_batches))
    digest = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            digest.update(key.encode())
            digest.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
    seen = _IMPORTANCE.setdefault(teacher, {})
    key = (digest.hexdigest(), num_batches)
    if key not in seen:
        seen.clear()  # one slice at a time is what a search or a distillation needs
        seen[key] = importance(teacher, batches, num_batches)
    return {k: v.clone() for k, v in seen[key].items()}


@torch.no_grad()
def importance(teacher: nn.Module, batches: Iterable[dict], num_batches: int) -> dict:
    """ETD importance scores from teacher forwards, averaged over non-padding tokens.

    Returns ``hidden`` (H,): mean |value| of the residual stream (embedding
    output plus every layer output); ``heads`` (N, heads): mean L2 norm of each
    head's contribution to the attention output projection; ``qk`` (N, heads,
    d): mean |q_j k_j| of dim j over every (query, key) pair of real tokens in a
    sequence, i.e. the size of dim j's term in the attention logits q . k;
    ``v`` (N, heads, d): mean |context_j| times the norm of its attention-output
    column, the size of value dim j's share of the output; ``neurons`` (N, F):
    mean |activation| times the norm of the neuron's output-weight column.
    """
    base = teacher.base_model
    adapter = adapter_for(teacher)
    c = adapter.dims(teacher.config)
    n_heads, head_dim, n = c.heads, c.head_dim, c.layers
    acc = {
        "hidden": torch.zeros(c.hidden),
        "heads": torch.zeros(n, n_heads),
        "qk": torch.zeros(n, c.hidden),
        "v": torch.zeros(n, c.hidden),
        "neurons": torch.zeros(n, c.ffn),
    }
    state: dict = {"mask": None, "tokens": 0.0, "pairs": 0.0, "q": {}, "k": {}}

    def masked_sum(x: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (...), padding excluded
        return torch.einsum("bt,bt...->...", state["mask"], x.float()).cpu()

    def residual(_mod, _inp, out):
        acc["hidden"] += masked_sum((out[0] if isinstance(out, tuple) else out).abs())

    def per_sequence(side: str, i: int):
        # sum_t |q_tj| per sequence: summed over all (t, s) pairs of one sequence,
        # |q_tj| |k_sj| factorises into (sum_t |q_tj|)(sum_s |k_sj|), so the logit
        # term of every pair is scored without building the T x T product.
        def hook(_mod, _inp, out):
            state[side][i] = torch.einsum("bt,btd->bd", state["mask"], out.float().abs())

        return hook

    def head_hook(i: int):
        def hook(proj, inp):
            acc["qk"][i] += (state["q"].pop(i) * state["k"].pop(i)).sum(0).cpu()
            acc["v"][i] += masked_sum(inp[0].abs())
            ctx = inp[0].unflatten(-1, (n_heads, head_dim))  # (B, T, heads, d)
            w = proj.weight.unflatten(-1, (n_heads, head_dim))  # (H, heads, d)
            contrib = torch.einsum("btnd,hnd->btnh", ctx, w)  # each head's share of the output
            acc["heads"][i] += masked_sum(contrib.norm(dim=-1))

        return hook

    def neuron_hook(i: int):
        def hook(_mod, inp):
            acc["neurons"][i] += masked_sum(inp[0].abs())

        return hook

    # The stream starts after ELECTRA's projection where there is one.
    stream_in = adapter.embedding_projection(base) or adapter.embeddings(base)
    handles = [stream_in.register_forward_hook(residual)]
    for i, layer in enumerate(adapter.blocks(base)):
        handles += [
            layer.register_forward_hook(residual),
            adapter.part(layer, "query").register_forward_hook(per_sequence("q", i)),
            adapter.part(layer, "key").register_forward_hook(per_sequence("k", i)),
            adapter.part(layer, "attn_out").register_forward_pre_hook(head_hook(i)),
            adapter.part(layer, "ffn_out").register_forward_pre_hook(neuron_hook(i)),
        ]
    was_training = teacher.training
    teacher.eval()  # dropout would make the scores noisy and unrepeatable
    device = next(teacher.parameters()).device
    try:
        for batch in itertools.islice(batches, num_batches):
            keys = ("input_ids", "attention_mask", "token_type_ids")
            inputs = {k: batch[k].to(device) for k in keys if k in batch}
            mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
            state["mask"] = mask.float()
            state["tokens"] += state["mask"].sum().item()
            state["pairs"] += state["mask"].sum(1).square().sum().item()
            base(**inputs)
    finally:
        for h in handles:
            h.remove()
        teacher.train(was_training)
    if not state["tokens"]:
        raise InitError(
            "student.init.method: 'etd-impt' got no corpus batches to measure importance"
        )
    scores = {k: v / state["tokens"] for k, v in acc.items()}
    scores["qk"] = acc["qk"] / state["pairs"]
    layers = adapter.blocks(base)
    out_norms = [adapter.part(layer, "ffn_out").weight.norm(dim=0).float().cpu() for layer in layers]
    scores["neurons"] = scores["neurons"] * torch.stack(out_norms)
    attn_norms = [adapter.part(layer, "attn_out").weight.norm(dim=0).float().cpu() for layer in layers]
    scores["v"] = scores["v"] * torch.stack(attn_norms)
    for kind in ("qk", "v"):
        scores[kind] = scores[kind].unflatten(-1, (n_heads, head_dim))
    return scores


def _extract(student, teacher, cfg: InitConfig, mapping, scores: dict) -> dict:
    """Copy the chosen teacher layers into ``student``, keeping the top-scoring indices."""
    check_width(student.config, teacher.config, cfg.method, exact=False)
    adapter = adapter_for(teacher)
    s, t = dims(student.config), dims(teacher.config)
    s_head_dim = s.head_dim
    layers = seed_layers(cfg, mapping, s.layers, t.layers)
    hidden = _top(scores["hidden"], s.hidden)
    sb, tb = student.base_model, teacher.base_model
    index = {"hidden": hidden}
    _copy_sliced(adapter.embeddings(sb), adapter.embeddings(tb),
                 embedding_slices(adapter.embeddings(tb), t.hidden), index)
    if adapter.embedding_projection(tb) is not None:
        if adapter.embedding_projection(sb) is None:
            raise InitError(
                f"student.hidden_size: {s.hidden} equals the teacher's embedding width, so the student "
                "has no embedding projection to extract into; choose another width"
            )
        _copy_sliced(adapter.embedding_projection(sb), adapter.embedding_projection(tb),
                     {"weight": ("hidden", None), "bias": ("hidden",)}, index)
    if adapter.pooler(sb) is not None and adapter.pooler(tb) is not None:
        _copy_sliced(adapter.pooler(sb), adapter.pooler(tb), _POOLER_SLICES, index)
    # A table every layer shares (MPNet's position bias, one column per head) keeps the
    # heads that the student's layers, together, score highest.
    shared = None
    if s.heads < t.heads:
        shared = _top(sum(scores["heads"][i - 1] for i in layers), s.heads)
    copy_shared_head_tables(sb, tb, shared)
    # Queries are copied unscaled. Rescaling them by sqrt(d_student / d_teacher), to keep
    # the teacher's 1/sqrt(d) on the kept logit terms, moved the student's attention maps
    # away from the teacher's (MiniLM 12 heads of 32 -> 16, 192 of 384 dims, etd-impt: KL
    # at the student's first layer 1.26 unscaled, 1.45 scaled; etd-rand 1.92 and 1.96):
    # cutting hidden dims shrinks q and k too, and the kept dims carry more than their
    # share of each logit.
    heads, qk_dims, v_dims, neurons = [], [], [], []
    slices, t_blocks = layer_slices(adapter), adapter.blocks(tb)
    for s_layer, t_idx in zip(adapter.blocks(sb), layers, strict=True):
        kept_heads = _top(scores["heads"][t_idx - 1], s.heads)
        kept_neurons = _top(scores["neurons"][t_idx - 1], s.ffn)
        qk = _head_dims(scores["qk"][t_idx - 1], kept_heads, s_head_dim)
        v = _head_dims(scores["v"][t_idx - 1], kept_heads, s_head_dim)
        index = {"hidden": hidden, "qk": qk, "v": v, "ffn": kept_neurons}
        _copy_sliced(s_layer, t_blocks[t_idx - 1], slices, index)
        heads.append(kept_heads.tolist())
        qk_dims.append(qk.tolist())
        v_dims.append(v.tolist())
        neurons.append(kept_neurons.tolist())
    return {
        "teacher_layers": layers,
        "hidden_dims": hidden.tolist(),
        "heads": heads,
        "head_size": s_head_dim,
        "qk_dims": qk_dims,
        "v_dims": v_dims,
        "neurons": neurons,
    }


def _head_dims(scores: torch.Tensor, kept_heads: torch.Tensor, keep: int) -> torch.Tensor:
    """Flat teacher indices of the ``keep`` best dims of each kept head, head by head.

    ``scores`` is (heads, d); student head i gets kept head i's dims in teacher order.
    """
    head_dim = scores.shape[1]
    dims = torch.stack([_top(scores[h], keep) for h in kept_heads.tolist()])
    return (kept_heads[:, None] * head_dim + dims).flatten()


def check_width(s, t, method: str, exact: bool) -> None:
    """Student widths must not exceed the teacher's, and must equal them for ``copy``."""
    sd, td = dims(s), dims(t)
    for key, sv, tv in (("hidden_size", sd.hidden, td.hidden), ("num_attention_heads", sd.heads, td.heads),
                        ("intermediate_size", sd.ffn, td.ffn)):
        if sv > tv:
            raise InitError(
                f"student.{key}: {sv} exceeds the teacher's {tv}; init '{method}' takes "
                "its weights from the teacher, so the student cannot be wider"
            )
        if exact and sv < tv:
            raise InitError(
                f"student.{key}: {sv} is narrower than the teacher's {tv}; init '{method}' "
                "copies whole layers; use 'etd-rand' or 'etd-impt' to extract a narrower student"
            )
    s_head, t_head = sd.head_dim, td.head_dim
    if s_head > t_head:
        raise InitError(
            f"student.num_attention_heads: init '{method}' can cut dims inside heads but not widen "
            f"them; the student's head size {sd.hidden}/{sd.heads} = {s_head} "
            f"exceeds the teacher's {t_head}; use {fewest_heads(sd.hidden, t_head)} or more heads"
        )


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (keeps the teacher's layout)."""
    return torch.topk(scores, k).indices.sort().values


@torch.no_grad()
def _copy_sliced(dst: nn.Module, src: nn.Module, slices: dict, index: dict) -> None:
    for name, param in dst.named_parameters():
        if name not in slices:
            # An unknown parameter means a layout ETD was not written for; copying
            # part of a layer would silently give a broken student.
            raise InitError(f"ETD does not know how to slice '{name}' of {type(dst).__name__}")
        value = src.get_parameter(name)
        for dim, kind in enumerate(slices[name]):
            if kind is not None:
                value = value.index_select(dim, index[kind].to(value.device))
        if value.shape != param.shape:
            raise InitError(
                f"ETD: teacher '{name}' sliced to {tuple(value.shape)}, "
                f"student has {tuple(param.shape)}"
            )
        param.copy_(value)


def _reseed(student: nn.Module, seed: int) -> None:
    """Re-run the model's own init under ``seed``, leaving the caller's RNG as it was."""
    # transformers 5 skips modules flagged as initialised; clear the flags so all re-init.
    for obj in itertools.chain(student.modules(), student.parameters(), student.buffers()):
        if hasattr(obj, "_is_hf_initialized"):
            del obj._is_hf_initialized
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student.init_weights()
