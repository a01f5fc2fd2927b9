"""layersearch: search teacher-to-student layer mappings for task-agnostic BERT distillation.

The Python API (docs/api.md)::

    import layersearch

    cfg = layersearch.load_config("configs/quickstart.yaml", overrides=["search.generations=1"])
    found = layersearch.search(cfg)                       # search.driver.SearchResult
    verdicts = layersearch.compare(cfg, ["uniform", "2,4,6"])   # workflows.results.Verdicts
    student = layersearch.distill(cfg, found.run_id)      # workflows.results.Distilled
    truth = layersearch.confirm(cfg, ["uniform", found.run_id])  # workflows.results.Confirmed

Each workflow lives in ``layersearch.workflows``; none prints (progress goes to a
``say`` callback or the ``layersearch`` logger). Importing this package loads
neither torch nor Ray: the names below are imported when first used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("layersearch")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# name -> (module, attribute). search, distill and confirm are also the names of a subpackage
# or module of their own; those modules are callable (``workflows.callable``), so the name is
# both, whichever was imported first.
_API = {
    "load_config": ("layersearch.config", "load_config"),
    "search": ("layersearch.search", None),
    "distill": ("layersearch.distill", None),
    "confirm": ("layersearch.confirm", None),
    "evaluate": ("layersearch.workflows.evaluate", "evaluate"),
    "baselines": ("layersearch.workflows.evaluate", "baselines"),
    "compare": ("layersearch.workflows.compare", "compare"),
    "prepare_data": ("layersearch.workflows.data", "prepare"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'layersearch' has no attribute '{name}'")
    module, attr = _API[name]
    found = importlib.import_module(module)
    return found if attr is None else getattr(found, attr)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
