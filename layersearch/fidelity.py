"""What is known of a proxy's agreement with final students, said wherever its ranking is read.

A proxy's ranking (a search's winner, a compare's verdicts) is about students
distilled for the proxy's few steps. Whether it carries to fully distilled
students is what the fidelity ladder measures (``proxy.evidence``), and only for
the proxy it measured: a config that runs another one (``--set
proxy.train.max_steps=1``) gets "not measured", with the settings that differ.
"""

from __future__ import annotations

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


def fidelity_tag(cfg) -> str:
    """``validated``, ``unvalidated`` or ``unmeasured``: the ``proxy_fidelity`` tag of a run."""
    evidence = cfg.evidence
    return "unmeasured" if evidence is None else "validated" if evidence.validated else "unvalidated"


def config_fidelity_text(cfg) -> str:
    return fidelity_text(cfg.proxy.evidence, cfg.evidence_drift())
