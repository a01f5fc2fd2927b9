"""GLUE proxy tasks: a registry by name, loaders for local folders and the hub.

A local folder uses the layout GLUE distributes (``<root>/<task>/train.tsv``
and ``dev.tsv``); its rows come out with the hub's column names and integer
labels, so everything downstream sees one schema whichever source was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from layersearch.errors import UserError

# tasks.source: hub reads GLUE from this Hugging Face Hub dataset (parquet, one config per task).
GLUE_HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    text_fields: tuple[str, ...]  # hub column names, one or two sentences
    label_names: tuple[str, ...]  # index = integer label
    metrics: tuple[str, ...]  # first one is the task's headline score
    # Local TSV layout: header or not, and local column -> hub column.
    local_header: bool = True
    local_columns: dict | None = None
    local_names: tuple[str, ...] | None = None  # column names for header-less files
    dev_split: str = "validation"


def _sentence_pair(a: str, b: str) -> dict:
    return {a: "sentence1", b: "sentence2"}


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("sst2", ("sentence",), ("negative", "positive"), ("accuracy",),
                 local_columns={"sentence": "sentence", "label": "label"}),
        TaskSpec("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                 ("f1", "accuracy"),
                 local_columns={"Quality": "label", **_sentence_pair("#1 String", "#2 String")}),
        TaskSpec("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
                 ("accuracy",),
                 local_columns={"label": "label", **_sentence_pair("sentence1", "sentence2")}),
        TaskSpec("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews",),
                 local_header=False, local_names=("source", "label", "mark", "sentence"),
                 local_columns={"sentence": "sentence", "label": "label"}),
        # Hub-only tasks: no local layout declared, load them with tasks.source: hub.
        TaskSpec("qnli", ("question", "sentence"), ("entailment", "not_entailment"),
                 ("accuracy",)),
        TaskSpec("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
                 ("f1", "accuracy")),
        TaskSpec("mnli", ("premise", "hypothesis"),
                 ("entailment", "neutral", "contradiction"), ("accuracy",),
                 dev_split="validation_matched"),
        TaskSpec("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
                 ("accuracy",)),
    ]
}


class TaskError(UserError):
    pass


def _features(spec: TaskSpec) -> Features:
    cols = {f: Value("string") for f in spec.text_fields}
    cols["label"] = ClassLabel(names=list(spec.label_names))
    return Features(cols)


def _load_local_split(spec: TaskSpec, path: Path) -> Dataset:
    if not path.is_file():
        raise TaskError(f"tasks.source: {path} not found (expected GLUE layout <source>/{spec.name}/)")
    kwargs = dict(delimiter="\t", quoting=3, encoding="utf-8-sig", keep_default_na=False)
    if not spec.local_header:
        kwargs.update(header=None, names=list(spec.local_names))
    # datasets' csv builder forwards these to pandas; quoting=3 (QUOTE_NONE)
    # because SST-2 and MRPC hold bare quote characters; utf-8-sig strips
    # MRPC's byte-order mark from the first header name.
    raw = load_dataset("csv", data_files=str(path), split="train", **kwargs)
    mapping = spec.local_columns
    raw = raw.select_columns(list(mapping)).rename_columns(
        {k: v for k, v in mapping.items() if k != v}
    )
    label_col = raw["label"]
    if label_col and isinstance(label_col[0], str) and not label_col[0].isdigit():
        index = {n: i for i, n in enumerate(spec.label_names)}
        raw = raw.map(lambda r: {"label": index[r["label"]]})
    return raw.cast(_features(spec))


def load_task(name: str, source: str) -> DatasetDict:
    """Train and dev splits of a task, keyed ``train`` and ``dev``."""
    # Small files: datasets' per-step progress bars would only be noise here.
    was_enabled = are_progress_bars_disabled() is False
    disable_progress_bars()
    try:
        return _load_task(name, source)
    finally:
        if was_enabled:
            enable_progress_bars()


def _load_task(name: str, source: str) -> DatasetDict:
    if name not in TASKS:
        raise TaskError(f"tasks.names: unknown task '{name}'; choose from {sorted(TASKS)}")
    spec = TASKS[name]
    if source == "hub":
        ds = load_dataset(GLUE_HUB_ID, name)
        return DatasetDict(train=ds["train"], dev=ds[spec.dev_split])
    if spec.local_columns is None:
        raise TaskError(f"tasks.names: '{name}' loads only from the hub (tasks.source: hub)")
    root = Path(source) / name
    return DatasetDict(
        train=_load_local_split(spec, root / "train.tsv"),
        dev=_load_local_split(spec, root / "dev.tsv"),
    )


def score(name: str, predictions, labels) -> dict[str, float]:
    """The task's GLUE metrics; the first key is the headline score."""
    preds, refs = np.asarray(predictions), np.asarray(labels)
    out: dict[str, float] = {}
    for metric in TASKS[name].metrics:
        if metric == "accuracy":
            out[metric] = float(accuracy_score(refs, preds))
        elif metric == "f1":
            out[metric] = float(f1_score(refs, preds))
        elif metric == "matthews":
            out[metric] = float(matthews_corrcoef(refs, preds))
    return out
