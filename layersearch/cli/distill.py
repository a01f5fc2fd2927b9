"""``layersearch distill CONFIG --mapping M``: the full task-agnostic distillation.

M is a heuristic name (uniform, last, lower, upper), a mapping JSON file, an
explicit gene list such as ``2,4,6``, or a search run id. Writes a Hugging
Face model directory (``distill.output_dir``) and one MLflow run with the
config and genes as params, the loss curves as metrics, and the mapping,
config and model as artifacts. A failure leaves no output directory and
marks the run FAILED.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from layersearch.cli.common import ConfigArg, SetOpt, console, load, user_errors
from layersearch.config import Config

MappingOpt = Annotated[
    str,
    typer.Option("--mapping", "-m",
                 help="uniform | last | lower | upper | mapping.json | 2,4,6 | search run id"),
]


def mapping_params(mapping) -> dict[str, int | str]:
    """One param per gene, so MLflow's parallel-coordinates view can plot them."""
    params: dict[str, int | str] = {f"gene_{m}": g for m, g in enumerate(mapping.genes, 1)}
    params["mapping"] = mapping.key
    return params


def run_distill(cfg: Config, mapping_spec: str, output_dir: Path, resume: bool = False,
                progress: bool = True) -> tuple[str, Path]:
    """The distill job; returns (MLflow run id, model directory)."""
    import json

    from layersearch.data.slices import get_slice
    from layersearch.distill import train
    from layersearch.export import save_model_dir
    from layersearch.models import load_teacher_for, load_tokenizer
    from layersearch.resolve import resolve_any_mapping
    from layersearch.student import finish_student, make_student
    from layersearch.tracking import Tracker, flatten

    tracker = Tracker(cfg.tracking)
    teacher = load_teacher_for(cfg, attentions=False)  # the evaluator's loader: same objective
    tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
    ckpt_dir = output_dir.with_name(output_dir.name + ".checkpoints")
    with tracker.run(f"distill {mapping_spec}", tags={"layersearch.kind": "distill"}) as run_id:
        # Resolved inside the run, so a bad mapping is on record as a FAILED run.
        mapping = resolve_any_mapping(mapping_spec, cfg, teacher.config.num_hidden_layers)
        tracker.log_params(run_id, {**flatten(cfg.to_dict()), **mapping_params(mapping)})
        tracker.log_text(run_id, cfg.to_yaml(), "config.yaml")
        console.print(f"MLflow run [bold]{run_id}[/] ({cfg.tracking.uri}); mapping {mapping}")
        data = get_slice(cfg.corpus, tokenizer, cfg.distill.corpus_blocks,
                         cfg.distill.train.seed).input_ids
        pad = tokenizer.pad_token_id or 0
        student, loss, report = make_student(cfg, teacher, mapping, data, pad, tokenizer)
        tracker.log_dict(run_id, report, "init_report.json")
        result = train(student, teacher, loss, data, cfg.distill.train, pad_token_id=pad,
                       checkpoint_dir=ckpt_dir, resume=resume, progress=progress)
        tracker.log_series(run_id, {(k if k == "lr" else f"loss/{k}"): v
                                    for k, v in result.curves.items()})
        tracker.log_metrics(run_id, {"final_loss": result.final_loss,
                                     "tokens_per_second": result.tokens_per_second,
                                     "train_seconds": result.seconds})
        mapping_json = json.dumps(mapping.to_json(cfg.teacher.model, list(loss.weights)), indent=2)
        out = save_model_dir(finish_student(student), tokenizer, output_dir,
                             {"mapping.json": mapping_json, "layersearch.yaml": cfg.to_yaml()})
        tracker.log_artifact(run_id, out, "model")
        if cfg.tracking.registered_model:
            import mlflow

            mlflow.register_model(f"runs:/{run_id}/model", cfg.tracking.registered_model)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run finished; resume state is moot
    return run_id, out


@user_errors
def distill(
    config: ConfigArg,
    mapping: MappingOpt,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Model directory (default distill.output_dir)")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint")] = False,
    set_: SetOpt = None,
) -> None:
    """Distil the teacher into a student with the given layer mapping."""
    cfg = load(config, set_)
    out_dir = output or Path(cfg.distill.output_dir)
    run_id, out = run_distill(cfg, mapping, out_dir, resume)
    console.print(f"[green]done[/] model directory {out} (loads with AutoModel); MLflow run {run_id}")
