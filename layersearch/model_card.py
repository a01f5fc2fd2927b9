"""The student's model card: a README.md in its model directory, as the Hugging Face Hub reads it.

YAML front matter (``base_model``, ``library_name``, ``tags``, ``pipeline_tag``)
then what made the student: the teacher, the layer mapping and init, the
objective, the corpus and steps, the proxy's evidence and the search it came
from; ``confirm`` adds its downstream scores (``add_scores``). The directory
also holds ``mapping.json`` and ``layersearch.yaml`` (the config), which the card names.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CARD = "README.md"
SCORES_BEGIN, SCORES_END = "<!-- layersearch:scores -->", "<!-- /layersearch:scores -->"
# Offline teachers are packaged copies of Hub models: the card names the Hub original.
OFFLINE_HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
                   "mpnet-base": "sentence-transformers/all-mpnet-base-v2"}


def base_model(teacher: str) -> str | None:
    """The teacher as a Hub id, or None for a local directory (the Hub's field takes ids only)."""
    if teacher.startswith("offline:"):
        return OFFLINE_HUB_IDS.get(teacher.removeprefix("offline:"))
    if Path(teacher).exists() or teacher.startswith((".", "/", "~")):
        return None
    return teacher


def _model_type(out_dir: Path) -> str:
    try:
        return str(json.loads((Path(out_dir) / "config.json").read_text())["model_type"])
    except (OSError, ValueError, KeyError):
        return "bert"


def write_model_card(out_dir: Path, cfg, mapping, run_id: str, lineage: dict | None = None,
                     result: dict | None = None) -> Path:
    """Write ``out_dir/README.md`` for a finished distillation (MLflow ``run_id``)."""
    lineage = lineage or {}
    family = _model_type(out_dir)  # the student's family is the teacher's (docs/families.md)
    meta = {"library_name": "transformers", "pipeline_tag": "feature-extraction",
            "tags": ["layersearch", "distillation", "knowledge-distillation", family, "task-agnostic"]}
    hub_id = base_model(cfg.teacher.model)
    if hub_id:
        meta = {"base_model": hub_id, "base_model_relation": "finetune", **meta}
    search_run = lineage.get("layersearch.search_run")
    d = cfg.distill
    steps = (result or {}).get("steps")
    init = cfg.student.init.method
    verdict = lineage.get("layersearch.verdict")
    verdict = f" (its verdict against uniform: {verdict})" if verdict else ""
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {cfg.student.num_layers}-layer student of {cfg.teacher.model}", "",
        "A task-agnostic student distilled by layersearch (a layer-mapping search for BERT-family "
        f"distillation) from `{cfg.teacher.model}`"
        f"{f' (revision {cfg.teacher.revision})' if cfg.teacher.revision else ''}. It is an encoder, like its "
        "teacher: fine-tune it on a task (below) or read its hidden states.", "",
        "## How it was made", "",
        "| | |", "|---|---|",
        f"| teacher | `{cfg.teacher.model}` |",
        f"| student | {cfg.student.num_layers} layers, hidden size {cfg.student.hidden_size} |",
        f"| layer mapping | `{list(mapping.genes)}` (student layer i learns from teacher layer genes[i]; "
        f"`{lineage.get('layersearch.mapping_source', mapping.key)}`) |",
        f"| init | `{init}`" + (f", from teacher layers `{list(mapping.init)}`" if mapping.init else "") + " |",
        f"| objective | {_objective(cfg)} |",
        f"| corpus | {', '.join(str(p) for p in cfg.corpus.paths)} ({cfg.corpus.seq_length}-token blocks"
        f"{f', {d.corpus_blocks:,} blocks' if d.corpus_blocks else ''}) |",
        f"| steps | {steps if steps is not None else d.train.max_steps} (seed {d.train.seed}) |",
        f"| MLflow run | `{run_id}` ({cfg.tracking.uri}, experiment `{cfg.tracking.experiment}`) |",
        f"| search run | {f'`{search_run}`' if search_run else '-'}{verdict} |",
        "",
        "## Evidence behind the mapping", "",
        _evidence_text(cfg), "",
        SCORES_BEGIN, "No downstream scores yet: `layersearch confirm` adds them here.", SCORES_END, "",
        "## Files", "",
        "- `config.json`, `model.safetensors`, tokenizer files: a Hugging Face model directory "
        "(`AutoModel.from_pretrained`).",
        "- `mapping.json`: the layer mapping (`layersearch distill --mapping mapping.json` reuses it).",
        "- `layersearch.yaml`: the whole config of this distillation.", "",
        "## Use", "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f'model = AutoModelForSequenceClassification.from_pretrained("{out_dir.name}", num_labels=2)',
        f'tokenizer = AutoTokenizer.from_pretrained("{out_dir.name}")',
        "# then fine-tune as any BERT encoder, e.g. with transformers.Trainer",
        "```", "",
    ]
    path = out_dir / CARD
    path.write_text("\n".join(lines))
    return path


def add_scores(out_dir: Path, scores: dict[str, float], what: str) -> None:
    """Put ``confirm``'s downstream scores (task -> mean score) in the card's scores section."""
    path = out_dir / CARD
    if not path.is_file():
        return
    text = path.read_text()
    if SCORES_BEGIN not in text or SCORES_END not in text:
        return
    rows = "\n".join(f"| {task} | {score:.4f} |" for task, score in scores.items())
    block = f"{SCORES_BEGIN}\n## Downstream scores\n\n{what}\n\n| task | score |\n|---|---|\n{rows}\n{SCORES_END}"
    head, rest = text.split(SCORES_BEGIN, 1)
    path.write_text(head + block + rest.split(SCORES_END, 1)[1])


def _objective(cfg) -> str:
    return ", ".join(f"{name} x {weight:g}" for name, weight in cfg.objective.terms.items() if weight > 0)


def _evidence_text(cfg) -> str:
    """What ``proxy.evidence`` says of how well the proxy's ranking predicts final students."""
    from layersearch.fidelity import config_fidelity_text

    return (f"The mapping was chosen by proxy fitness ({cfg.tasks.readout} readout, "
            f"{cfg.proxy.train.max_steps} distillation steps per candidate); {config_fidelity_text(cfg)}.")
