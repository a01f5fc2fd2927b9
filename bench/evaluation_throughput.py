"""Whole proxy evaluations per hour: today's path, then each throughput change added one at a time.

    .venv/bin/python bench/evaluation_throughput.py [--single 2] [--pack 4] [--seeds 3]

A whole evaluation is what a search pays per candidate: the proxy
distillation and every fine-tune (each proxy task x ``--seeds`` fine-tune
seeds), on the quickstart teacher, corpus slice and task data. Every row
runs in this process with one ``Evaluator`` (teacher and slice loaded once)
on the same mappings, and adds one change to the row above it:

1. one at a time, fp32, task data tokenised for every candidate and seed
   (the path before encodings were cached);
2. + task encodings cached in the evaluator (tokenised once, reused);
3. + bf16 autocast for distillation and fine-tuning;
4. + packed distillation: ``--pack`` students per teacher forward;
5. + packed fine-tuning: the pack's students fine-tuned as one vmapped model.

Rows 1-3 time ``--single`` evaluations, rows 4-5 one pack; each prints
evaluations per hour and its ratio to the row above and to row 1. The last
line is the best row against row 1: ``whole evaluation speedup: Nx``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from layersearch.config import load_config
from layersearch.finetune import TaskEncodings
from layersearch.fitness import Evaluator
from layersearch.mapping import HEURISTICS, heuristic

ROOT = Path(__file__).resolve().parents[1]


class Uncached(TaskEncodings):
    """Tokenises on every request, as each candidate's every fine-tune did before."""

    def train(self, task: str, seed: int):
        self._train.clear()
        return super().train(task, seed)

    def dev(self, task: str):
        self._dev.clear()
        return super().dev(task)


def with_settings(cfg, precision: str, packed: bool):
    train = cfg.proxy.train.model_copy(update={"precision": precision})
    finetune = cfg.tasks.finetune.model_copy(update={"precision": precision, "packed": packed})
    return cfg.model_copy(update={
        "proxy": cfg.proxy.model_copy(update={"train": train}),
        "tasks": cfg.tasks.model_copy(update={"finetune": finetune})})


def timed(evaluator: Evaluator, mappings: list, pack: bool) -> float:
    """Seconds per whole evaluation of ``mappings``: all at once as a pack, or one by one."""
    start = time.perf_counter()
    results = evaluator.evaluate_pack(mappings) if pack else [evaluator.evaluate(m) for m in mappings]
    seconds = time.perf_counter() - start
    failed = [ev.status for ev in results if not ev.ok]
    if failed:
        raise SystemExit(f"an evaluation failed: {failed[0]}")
    return seconds / len(mappings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--single", type=int, default=2, help="evaluations timed in each one-at-a-time row")
    ap.add_argument("--pack", type=int, default=4, help="students per pack (K)")
    ap.add_argument("--seeds", type=int, default=3, help="fine-tune seeds per evaluation")
    args = ap.parse_args()
    cfg = load_config(args.config, [f"tasks.finetune.seeds={list(range(args.seeds))}", "proxy.slice_seeds=[0]"])
    evaluator = Evaluator(cfg, device="cpu" if not torch.cuda.is_available() else "cuda")
    m, n = cfg.student.num_layers, evaluator.num_teacher_layers
    mappings = list(dict.fromkeys(heuristic(h, m, n) for h in HEURISTICS))
    if len(mappings) < args.pack:
        raise SystemExit(f"only {len(mappings)} distinct heuristic mappings for --pack {args.pack}")
    mappings = mappings[: args.pack]
    print(f"{evaluator.device}, {torch.get_num_threads()} threads; a whole evaluation = distillation "
          f"({cfg.proxy.train.max_steps} steps) + {len(cfg.tasks.names)} tasks x {args.seeds} seeds "
          f"({cfg.tasks.finetune.train_examples} examples each); mappings {[list(x.genes) for x in mappings]}",
          flush=True)

    rows = [
        ("one at a time, fp32, task data tokenised per fine-tune", "fp32", False, False, Uncached),
        ("+ task encodings cached", "fp32", False, False, TaskEncodings),
        ("+ bf16 autocast", "bf16", False, False, TaskEncodings),
        (f"+ packed distillation (K={args.pack})", "bf16", True, False, TaskEncodings),
        (f"+ packed fine-tuning (K={args.pack})", "bf16", True, True, TaskEncodings),
    ]
    cached = TaskEncodings(evaluator.tokenizer, evaluator.datasets, cfg.tasks.finetune)
    for task in cfg.tasks.names:  # the steady state of an evaluator: every encoding made once
        cached.dev(task)
        for seed in cfg.tasks.finetune.seeds:
            cached.train(task, seed)
    base = prev = None
    rates = []
    for label, precision, pack, packed_ft, encodings in rows:
        evaluator.cfg = with_settings(cfg, precision, packed_ft)
        evaluator.encoded = cached if encodings is TaskEncodings else Uncached(
            evaluator.tokenizer, evaluator.datasets, cfg.tasks.finetune)
        seconds = timed(evaluator, mappings if pack else mappings[: args.single], pack)
        rate = 3600 / seconds
        base, prev = base or rate, prev or rate
        print(f"{label:58s} {rate:7.1f} evaluations/h  ({seconds:5.1f} s each)  "
              f"{rate / prev:5.2f}x prev  {rate / base:5.2f}x baseline", flush=True)
        prev = rate
        rates.append(rate)
    print(f"whole evaluation speedup: {max(rates) / base:.2f}x")


if __name__ == "__main__":
    main()
