"""The search service: the genetic algorithm, the evaluator pool and the result cache."""

# ``layersearch.search(...)`` runs the workflow (the Python API): see layersearch.workflows.callable.
from layersearch.workflows.callable import make_callable  # noqa: E402

make_callable(__name__, "layersearch.workflows.search", "search")
