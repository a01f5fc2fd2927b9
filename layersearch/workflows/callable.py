"""Modules that are also workflow functions.

``layersearch.search``, ``layersearch.distill`` and ``layersearch.confirm`` name a
subpackage or module, and Python sets a package's attribute to its submodule
whenever that submodule is imported, so a plain function of the same name would be
replaced by the module. The module itself is therefore made callable: calling it
calls the workflow, and ``import layersearch.search.driver`` goes on working.
"""

from __future__ import annotations

import importlib
import sys
import types


class WorkflowModule(types.ModuleType):
    _workflow: tuple[str, str]

    def __call__(self, *args, **kwargs):
        module, name = self._workflow
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


def make_callable(module_name: str, workflow_module: str, function: str) -> None:
    """Calling module ``module_name`` calls ``workflow_module.function``."""
    mod = sys.modules[module_name]
    mod.__class__ = WorkflowModule
    mod._workflow = (workflow_module, function)
