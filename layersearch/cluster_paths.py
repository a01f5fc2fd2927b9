"""Caches a cluster run must keep: relative cache paths under a cluster address, in words.

On a cluster a job's relative paths resolve inside its working directory (for
``ray job submit --working-dir``, a fresh copy per job), so a cache there is lost
when the job ends: a later search neither reuses its evaluations nor resumes
from them. ``validate`` and ``search`` say so where ``ray.address`` or
``RAY_ADDRESS`` names a cluster and a cache path is relative.
"""

from __future__ import annotations

import os
from pathlib import PurePath

from layersearch.config import Config

SHARED_EXAMPLE = "/data/proxy_data"  # the volume docker/compose.yaml and the KubeRay manifests share


def cache_paths(cfg: Config) -> dict[str, str]:
    """Every cache a later job reads back: key -> path."""
    paths = {"search.cache_dir": cfg.search.cache_dir, "corpus.cache_dir": cfg.corpus.cache_dir}
    if cfg.confirm.cache_dir:
        paths["confirm.cache_dir"] = cfg.confirm.cache_dir
    return paths


def relative_cache_notes(cfg: Config) -> list[str]:
    """One note per relative cache path, where this run goes to a cluster."""
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        return []
    notes = []
    for key, path in cache_paths(cfg).items():
        if not PurePath(path).is_absolute():
            leaf = PurePath(path).name
            notes.append(f"{key} is relative ({path}): on a cluster it lands in this job's working directory "
                         "and is lost with it, so later jobs neither reuse nor resume from it; put it on storage "
                         f"every job sees, e.g. --set {key}={SHARED_EXAMPLE}/{leaf} (docker/README.md)")
    return notes
