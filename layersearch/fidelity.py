"""What is known of a proxy's agreement with final students, said wherever its ranking is read.

A proxy's ranking (a search's winner, a compare's verdicts) is about students
distilled for the proxy's few steps. Whether it carries to fully distilled
students is what the fidelity ladder measures (``proxy.evidence``), and only for
the proxy it measured. ``proxy.evidence.spec`` records that proxy whole: its
proxy spec (``fitness/spec.py``: teacher weights, student, objective, init,
corpus contents, slice size, training budget, readout and its settings), with
the seeds it ran. A config whose own spec differs in any field (``--set
proxy.train.max_steps=1``, another corpus, another init) gets "not measured",
with the fields that differ. No hand-written list of settings to forget one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

_CHECK = "check a result that matters with layersearch confirm, or measure this proxy with bench/ladder.py"


def fidelity_text(evidence, drift: Sequence[str] = ()) -> str:
    """One line: the ladder's figures for this proxy, or why there are none."""
    if drift:
        return (f"this proxy's agreement with final students is not measured: proxy.evidence is about "
                f"another proxy ({'; '.join(drift)}), so its figures do not apply here; {_CHECK}")
    if evidence is None:
        return f"this proxy's agreement with final students is not measured (proxy.evidence): {_CHECK}"
    return evidence.text()


def evidence_spec(cfg, device: str | None = None) -> dict:
    """What ``proxy.evidence.spec`` holds for a proxy: its proxy spec on ``device`` (default:
    this process's), less the runtime's library versions and device kind, plus its seeds.

    The versions change the last digits of a unit, not which proxy runs (and an upgrade would
    otherwise unmeasure every proxy). The precision is the one configured: ``auto`` picks bf16
    only where the readout's fp32-vs-bf16 ranking check passed (precision.py), so it is one proxy
    wherever it runs; an explicit other precision is another. Cached teacher targets are what
    the teacher computes live, stored: the same proxy. The seeds stay out of the spec key, since
    more of them extend a cached evaluation, but figures measured on 3 slices are not a 1-slice
    proxy's.
    """
    from layersearch.fitness.spec import local_device, proxy_spec

    spec = proxy_spec(cfg, device or local_device())
    spec.pop("runtime", None)
    spec["proxy"].pop("teacher_targets", None)
    spec["proxy"]["train"]["precision"] = cfg.proxy.train.precision
    if "finetune" in spec.get("tasks", {}):
        spec["tasks"]["finetune"]["precision"] = cfg.tasks.finetune.precision
    spec["seeds"] = {"slices": list(cfg.proxy.slice_seeds), "units_per_slice": list(cfg.tasks.unit_seeds)}
    return json.loads(json.dumps(spec))  # plain JSON values, as YAML gives them back


def _leaves(tree, prefix: str = "") -> dict:
    """A nested dict as {dotted path: leaf value} (a list is a leaf)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _shown(value) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ABSENT = object()


def evidence_drift(cfg, device: str | None = None) -> list[str]:
    """Where this config runs another proxy than ``proxy.evidence`` was measured on, one
    ``field: measured at A, this run B`` per field of the spec; empty where every field matches
    (or there is no evidence)."""
    from layersearch.config import _same

    evidence = cfg.proxy.evidence
    if evidence is None:
        return []
    try:
        now = _leaves(evidence_spec(cfg, device))
    except Exception as exc:  # noqa: BLE001 -- whatever stops the spec, the figures cannot be matched
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"this run's proxy spec could not be computed ({first})"]
    then = _leaves(evidence.spec)
    out = []
    for key in sorted(set(now) | set(then)):
        a, b = then.get(key, _ABSENT), now.get(key, _ABSENT)
        if a is _ABSENT or b is _ABSENT or not _same(a, b):
            out.append(f"{key}: measured at {_shown(a)}, this run {_shown(b)}")
    return out


def applicable_evidence(cfg, device: str | None = None):
    """``proxy.evidence`` where it is about the proxy this config runs, else None."""
    return None if evidence_drift(cfg, device) else cfg.proxy.evidence


def fidelity_tag(cfg, device: str | None = None) -> str:
    """``validated``, ``unvalidated`` or ``unmeasured``: the ``proxy_fidelity`` tag of a run."""
    evidence = applicable_evidence(cfg, device)
    return "unmeasured" if evidence is None else "validated" if evidence.validated else "unvalidated"


def config_fidelity_text(cfg, device: str | None = None) -> str:
    return fidelity_text(cfg.proxy.evidence, evidence_drift(cfg, device))
