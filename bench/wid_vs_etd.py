"""WID vs ETD-Impt at the same step budget: a 3-layer, 192-wide student of the quickstart teacher.

    .venv/bin/python bench/wid_vs_etd.py                      # from the repository root
    .venv/bin/python bench/wid_vs_etd.py --steps 300 --set proxy.train.batch_size=32

Both students: the uniform mapping, 6 heads of 32, FFN 768, the objective
embedding_mse + hidden_mse + attention_kl (ETD's 6 heads rule out head-by-head
attention_mse), the same proxy corpus slice, batch, learning rate, seed and
step budget. WID's marking schedule is scaled to the budget. Each student is
fine-tuned on the config's tasks with the same settings; the per-task dev
scores, their mean and the majority-class baselines are printed.

The quickstart fine-tune (25 steps at 1e-4) leaves even the teacher at the
majority class, so by default the fine-tune runs 2 epochs at 5e-4, batch 16.
"""

from __future__ import annotations

import argparse
import time

import torch

from layersearch.config import apply_overrides, load_config, parse_config
from layersearch.data.slices import get_slice
from layersearch.data.tasks import load_task
from layersearch.distill import train
from layersearch.mapping import heuristic
from layersearch.models import load_teacher, load_tokenizer
from layersearch.readout.finetune import finetune_task
from layersearch.student import finish_student, make_student

SHAPE = {"num_layers": 3, "hidden_size": 192, "num_attention_heads": 6, "intermediate_size": 768}
OBJECTIVE = {"terms": {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_kl": 1.0},
             "relation_heads": 12}


def config_for(base: dict, method: str, steps: int):
    raw = {**base, "student": {**base["student"], **SHAPE,
                               "init": {**base["student"]["init"], "method": method}},
           "objective": OBJECTIVE}
    raw["proxy"]["train"]["max_steps"] = steps
    if method == "wid":
        # About 20 markings; the target width is reached at 60% of the budget, where
        # the penalty reaches its cap and zeroes the marked rows, leaving steps to recover.
        raw["student"]["init"]["wid"] = {"mask_every": max(1, steps // 20), "compress_until": 0.6,
                                         "penalty": 0.01, "penalty_max": 1.0}
    return parse_config(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=100, help="distillation steps for each student")
    ap.add_argument("--finetune-lr", type=float, default=5e-4)
    ap.add_argument("--finetune-epochs", type=float, default=2.0)
    ap.add_argument("--finetune-batch", type=int, default=16)
    ap.add_argument("--set", action="append", default=[], help="dotted override KEY=VALUE")
    args = ap.parse_args()

    base = apply_overrides(load_config(args.config).to_dict(), args.set)
    cfgs = {m: config_for(base, m, args.steps) for m in ("etd-impt", "wid")}
    any_cfg = cfgs["wid"]
    teacher = load_teacher(any_cfg.teacher.model, any_cfg.teacher.revision, attentions=False)
    tokenizer = load_tokenizer(any_cfg.teacher.model, any_cfg.teacher.revision)
    pad = tokenizer.pad_token_id or 0
    data = get_slice(any_cfg.corpus, tokenizer, any_cfg.proxy.slice_blocks,
                     any_cfg.proxy.slice_seeds[0]).input_ids
    mapping = heuristic("uniform", SHAPE["num_layers"], teacher.config.num_hidden_layers)
    tasks = {n: load_task(n, any_cfg.tasks.source) for n in any_cfg.tasks.names}
    ft = any_cfg.tasks.finetune.model_copy(update={
        "learning_rate": args.finetune_lr, "epochs": args.finetune_epochs,
        "batch_size": args.finetune_batch})
    t = any_cfg.proxy.train
    print(f"teacher {any_cfg.teacher.model}; student {SHAPE}; mapping {mapping}; "
          f"{args.steps} steps x {t.batch_size} blocks of {data.shape[1]} tokens, lr {t.learning_rate}; "
          f"fine-tune {ft.train_examples} examples x {ft.epochs} epochs, lr {ft.learning_rate}, "
          f"batch {ft.batch_size}, seeds {ft.seeds}", flush=True)

    rows, baselines = {}, {}
    for method, cfg in cfgs.items():
        began = time.perf_counter()
        student, loss, _ = make_student(cfg, teacher, mapping, data, pad, tokenizer)
        result = train(student, teacher, loss, data, cfg.proxy.train, pad_token_id=pad)
        student = finish_student(student).cpu().eval()
        distill_s = time.perf_counter() - began
        c = student.config
        assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
            3, 192, 6, 768), c
        scores = {}
        for name, ds in tasks.items():
            res = [finetune_task(student, tokenizer, name, ds, ft, seed) for seed in ft.seeds]
            scores[name] = sum(r.score for r in res) / len(res)
            baselines[name] = res[0].majority_baseline
        rows[method] = scores
        params = sum(p.numel() for p in student.parameters())
        print(f"{method:9s} distill {distill_s:5.0f}s, final loss {result.final_loss:.4f}, "
              f"{params / 1e6:.1f}M params, fine-tune {time.perf_counter() - began - distill_s:4.0f}s",
              flush=True)
        del student, loss
        torch.manual_seed(0)

    names = list(tasks)
    print("\n" + " ".join([f"{'':9s}", *(f"{n:>7s}" for n in names), f"{'mean':>7s}"]))
    for label, scores in [*rows.items(), ("majority", baselines)]:
        vals = [scores[n] for n in names]
        print(" ".join([f"{label:9s}", *(f"{v:7.4f}" for v in vals), f"{sum(vals) / len(vals):7.4f}"]))


if __name__ == "__main__":
    main()
