"""What a mapping is worth, and how sure we are: four jobs, one module each.

- ``spec``: proxy-spec identity (what a fitness depends on) and the cache key;
- ``record``: the evaluation record, whose units are per-seed dev predictions;
- ``stats`` and ``aggregate``: chance-corrected scores, intervals, paired
  comparisons and verdicts, and how an evaluation's units become its summary;
- ``evaluator``: proxy distillation plus fine-tuning, producing units.
"""

from layersearch.fitness.aggregate import Comparison, PairingError, compare, interval_text, summarize
from layersearch.fitness.evaluator import Evaluator
from layersearch.fitness.record import Evaluation, evaluation_key, unit_key
from layersearch.fitness.spec import (
    init_spec_key,
    local_device,
    proxy_spec,
    search_device,
    spec_key,
    units_of,
)

__all__ = [
    "Comparison", "Evaluation", "Evaluator", "PairingError", "compare", "evaluation_key", "init_spec_key",
    "interval_text",
    "local_device", "proxy_spec", "search_device", "spec_key", "summarize", "unit_key", "units_of",
]
