"""The workflows, as library functions: where each job a user runs lives.

==============  ===============================  =============================
workflow        function                         command line
==============  ===============================  =============================
search          ``workflows.search.search``      ``layersearch search``
distill         ``workflows.distill.distill``    ``layersearch distill``
confirm         ``workflows.confirm.confirm``    ``layersearch confirm``
evaluate        ``workflows.evaluate.evaluate``  ``layersearch evaluate``
baselines       ``workflows.evaluate.baselines`` ``layersearch baselines``
compare         ``workflows.compare.compare``    ``layersearch compare``
data prepare    ``workflows.data.prepare``       ``layersearch data prepare``
==============  ===============================  =============================

Each takes a validated ``Config`` (``layersearch.load_config``), returns a
dataclass (``workflows.results``) and prints nothing: progress lines go to a
``say`` callback, or to the ``layersearch`` logger (``workflows.progress``).
``layersearch/cli/`` parses arguments, calls these and renders what they return.
"""
