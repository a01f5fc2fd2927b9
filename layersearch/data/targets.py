"""Teacher targets: what the objective reads from the teacher on a proxy slice, computed once.

Every candidate of a search is distilled on the same few slices, so the
teacher's side of every step is the same for all of them. A slice's targets
are one teacher pass over all its blocks, asking for what any mapping of the
search space could read (``search_space_requirements``: hidden states of
every layer and the q/k/v of every mappable layer the objective uses), stored
beside the slice cache (``<corpus.cache_dir>/targets/<key>``, see ``arrays``)
and memory-mapped for reading. The trainer takes a micro-batch's rows from
them instead of running the teacher; the loss reads the same ``Features``.

Exact: each tensor is stored in the dtype the teacher pass produced it in
(fp32, or under bf16 autocast bf16 q/k/v and fp32 hidden states), and a
teacher row's output does not depend on the rows batched with it (on CPU,
checked bit for bit by tests/unit/test_targets.py), so cached and live
distillations are the same computation. The key names the block ids'
content, the teacher's files, the requirements, device kind, precision and
library versions.

``proxy.teacher_cache``: ``on``, ``off``, or ``auto``, which turns it on where
the config's estimated total (every slice seed plus the agreement readout's
held-out states) fits ``proxy.teacher_cache_budget_gb`` (10 GB by default).
The estimate uses the config alone, so every node of a search resolves
``auto`` alike and shares one spec key.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from layersearch.config import Config
from layersearch.data.arrays import Entry, open_entry
from layersearch.families import adapter_for
from layersearch.features import PROJECTIONS, Features, Requirements, extract

TARGETS_FORMAT = 1
BUILD_BATCH = 32
FULL_DISK_FIX = "Free space there, set corpus.cache_dir to a larger disk, or set proxy.teacher_cache: off"


def search_space_requirements(cfg: Config, num_teacher_layers: int) -> Requirements:
    """What any mapping of the search space may read from the teacher under ``cfg.objective``."""
    from layersearch.losses import requirements

    # The one rule DistillLoss asks per mapping, over every layer a mapping may name.
    active = [n for n, w in cfg.objective.terms.items() if w > 0]
    return requirements(active, frozenset(range(1, num_teacher_layers + 1)))


def bytes_per_block(req: Requirements, teacher_config, seq_length: int, precision: str) -> int:
    """Stored bytes of one block's targets: hidden states stay fp32 under bf16 autocast (layer norm
    runs in fp32), projections and logits come out of a linear layer in bf16."""
    width = int(teacher_config.hidden_size)
    low = 2 if precision == "bf16" else 4
    per_token = width * (4 * len(req.hidden) + low * (len(req.queries) + len(req.keys) + len(req.values)))
    if req.logits:
        per_token += low * int(teacher_config.vocab_size)
    return per_token * seq_length


def estimate(cfg: Config, teacher_config, device: str) -> dict:
    """Estimated MB of the config's teacher targets: per slice, held-out states, total."""
    from layersearch.precision import resolve_precision

    precision = resolve_precision(cfg.proxy.train.precision, device, cfg.tasks.readout)
    req = search_space_requirements(cfg, int(teacher_config.num_hidden_layers))
    per_slice = cfg.proxy.slice_blocks * bytes_per_block(req, teacher_config, cfg.corpus.seq_length, precision)
    heldout = (cfg.tasks.agreement.heldout_blocks * cfg.corpus.seq_length * int(teacher_config.hidden_size) * 4
               if cfg.tasks.readout == "agreement" else 0)
    mb = 2.0**20
    return {"per_slice_mb": per_slice / mb, "heldout_mb": heldout / mb, "precision": precision,
            "total_mb": (per_slice * len(cfg.proxy.slice_seeds) + heldout) / mb}


def teacher_cache_on(cfg: Config, device: str, teacher_config=None) -> bool:
    """``proxy.teacher_cache`` resolved: ``auto`` is on where the estimate fits the budget."""
    setting = cfg.proxy.teacher_cache
    if setting != "auto":
        return setting == "on"
    if teacher_config is None:
        from layersearch.models import load_teacher_config

        teacher_config = load_teacher_config(cfg.teacher.model, cfg.teacher.revision)
    return estimate(cfg, teacher_config, device)["total_mb"] <= cfg.proxy.teacher_cache_budget_gb * 1024


def _key(kind: str, ids: torch.Tensor, cfg: Config, device: str, precision: str, extra: dict) -> str:
    from layersearch.identity import runtime_identity, teacher_identity

    ident = {"format": TARGETS_FORMAT, "kind": kind,
             "blocks": hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest(),
             "shape": list(ids.shape),
             "teacher": teacher_identity(cfg.teacher.model, cfg.teacher.revision),
             "runtime": runtime_identity(device, precision), **extra}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _names(req: Requirements) -> list[tuple[str, int]]:
    return [(kind, i) for kind in ("hidden", *PROJECTIONS) for i in sorted(getattr(req, kind))]


class TeacherTargets:
    """A slice's stored teacher targets; ``features(rows, ...)`` is what ``extract`` would return."""

    def __init__(self, entry: Entry, req: Requirements, score_bias: torch.Tensor | None = None):
        # A family's own score term (MPNet's position bias) depends only on the block length and
        # the teacher's weights: recomputed from the teacher, not stored, and added as extract adds it.
        self.entry, self.req, self.score_bias = entry, req, score_bias

    @property
    def built(self) -> bool:
        return self.entry.built

    def features(self, rows: torch.Tensor, req: Requirements, attention_mask: torch.Tensor) -> Features:
        missing = [f"{k} {i}" for k, i in _names(req) if (k, i) not in _names(self.req)]
        if missing or (req.logits and not self.req.logits):
            raise ValueError(f"teacher targets lack {missing or ['logits']}: they were cached for another objective")
        index = np.asarray(rows.cpu(), dtype=np.int64)
        device = attention_mask.device

        def get(name: str) -> torch.Tensor:
            return self.entry.tensor(name, index).to(device, non_blocking=True)

        return Features(
            **{kind: {i: get(f"{kind}_{i}") for i in sorted(getattr(req, kind))} for kind in ("hidden", *PROJECTIONS)},
            attention_mask=attention_mask,
            logits=get("logits") if req.logits else None,
            score_bias=(self.score_bias.to(device) if self.score_bias is not None and req.queries and req.keys
                        else None),
        )


def slice_targets(cfg: Config, teacher, ids: torch.Tensor, device: str, precision: str) -> TeacherTargets:
    """The teacher targets of the slice ``ids`` [blocks, T], read from the cache or built now."""
    from layersearch.precision import autocast

    req = search_space_requirements(cfg, int(teacher.config.num_hidden_layers))
    key = _key("slice-targets", ids, cfg, device, precision,
               {"requirements": {k: sorted(getattr(req, k)) for k in ("hidden", *PROJECTIONS)},
                "logits": req.logits})

    def build(writer) -> dict:
        teacher.to(device).eval()
        files: dict = {}
        for b in range(0, len(ids), BUILD_BATCH):
            x = ids[b : b + BUILD_BATCH].to(device)
            with autocast(precision, torch.device(device).type), torch.no_grad():
                f = extract(teacher, x, torch.ones_like(x), req)
            parts = [(f"{k}_{i}", t) for k in ("hidden", *PROJECTIONS) for i, t in getattr(f, k).items()]
            if req.logits:
                parts.append(("logits", f.logits))
            for name, t in parts:
                if name not in files:
                    files[name] = writer.add(name, (len(ids), *t.shape[1:]), t.dtype)
                files[name].write(t)
        return {"precision": precision, "device": device, "blocks": len(ids)}

    entry = open_entry(_root(cfg), key, build, what="teacher targets", fix=FULL_DISK_FIX)
    bias = None
    adapter = adapter_for(teacher)
    if adapter.score_bias is not None and req.queries and req.keys:
        with torch.no_grad():
            bias = adapter.score_bias(teacher.to(device).base_model, ids.shape[1]).detach()
    return TeacherTargets(entry, req, bias)


def heldout_states(cfg: Config, teacher, ids: torch.Tensor, device: str) -> torch.Tensor:
    """The agreement readout's teacher side, [blocks * T, width] float64, cached like slice targets
    (``readout.agreement.last_hidden`` in fp32, the precision that readout always reads in)."""
    from layersearch.features import HIDDEN_BATCH as BATCH
    from layersearch.features import last_hidden_fp32

    key = _key("heldout-last-hidden", ids, cfg, device, "fp32", {"batch": BATCH})

    def build(writer) -> dict:
        out = None
        for b in range(0, len(ids), BATCH):
            states = last_hidden_fp32(teacher.to(device), ids[b : b + BATCH], device)
            out = out or writer.add("last_hidden", (len(ids), *states.shape[1:]), states.dtype)
            out.write(states)
        return {"precision": "fp32", "device": device, "blocks": len(ids)}

    entry = open_entry(_root(cfg), key, build, what="the agreement readout's teacher states", fix=FULL_DISK_FIX)
    y = entry.tensor("last_hidden")
    return y.double().reshape(-1, y.shape[-1])


def _root(cfg: Config):
    from pathlib import Path

    return Path(cfg.corpus.cache_dir).expanduser() / "targets"
