"""Search throughput: packed evaluation (K students per teacher pass) against one at a time.

    python bench/search_throughput.py                 # CPU: offline MiniLM-L6 teacher, 3-layer students
    python bench/search_throughput.py --gpu           # GPU: bert-base-shaped teacher (random init),
                                                      # 4-layer 312-wide students, bf16

Same data, same proxy budget, one process. For K = 1, 2, 4, 8 it times the
proxy distillation of K candidates packed (one teacher forward per batch,
only the mapped layers' tensors requested, SDPA attention) against the naive
path (each candidate trained alone, its own teacher pass per batch), and
prints evaluations per hour and the ratio. Whole evaluations add each
candidate's fine-tuning on the proxy tasks, which packing does not share.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from layersearch.config import parse_config
from layersearch.distill import train
from layersearch.mapping import Mapping
from layersearch.packed import train_packed
from layersearch.student import make_student

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cpu_setup(args):
    from layersearch.data.slices import get_slice
    from layersearch.models import load_teacher, load_tokenizer

    raw = {
        "teacher": {"model": "offline:minilm-l6"},
        "student": {"num_layers": 3, "init": {"method": "copy"}},
        "corpus": {"paths": [str(SHARED / "corpus" / "wikitext103")], "seq_length": args.seq,
                   "cache_dir": str(ROOT / "proxy_data" / "cache")},
        "proxy": {"train": {"max_steps": args.steps, "batch_size": args.batch, "precision": "fp32"}},
        "tasks": {"source": str(SHARED / "glue"), "names": ["sst2", "mrpc", "rte"],
                  "finetune": {"train_examples": args.ft_examples, "dev_examples": args.ft_examples // 2,
                               "seq_length": args.seq}},
    }
    cfg = parse_config(raw)
    teacher = load_teacher("offline:minilm-l6", attentions=False)
    tok = load_tokenizer("offline:minilm-l6")
    data = get_slice(cfg.corpus, tok, 256, seed=0).input_ids
    return cfg, teacher, tok, data


def gpu_setup(args):
    from transformers import BertConfig

    from layersearch.models import build_student

    torch.manual_seed(0)
    tcfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    teacher = build_student(tcfg, attentions=False).cuda().eval()
    raw = {
        "student": {"num_layers": 4, "hidden_size": 312, "num_attention_heads": 12,
                    "intermediate_size": 1200, "init": {"method": "random"}},
        "corpus": {"paths": ["unused"], "seq_length": args.seq},
        "proxy": {"train": {"max_steps": args.steps, "batch_size": args.batch, "precision": "bf16"}},
    }
    cfg = parse_config(raw)
    data = torch.randint(1000, 30000, (1024, args.seq))
    return cfg, teacher, None, data


def mappings(cfg, n_teacher: int, count: int) -> list[Mapping]:
    rng = random.Random(0)
    m = cfg.student.num_layers
    out = []
    while len(out) < count:
        genes = sorted(rng.sample(range(1, n_teacher), m - 1)) + [n_teacher]
        if Mapping(tuple(genes), n_teacher) not in out:
            out.append(Mapping(tuple(genes), n_teacher))
    return out


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--ft-examples", type=int, default=256)
    ap.add_argument("--no-finetune", action="store_true")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    cfg, teacher, tok, data = gpu_setup(args) if args.gpu else cpu_setup(args)
    n = teacher.config.num_hidden_layers
    cands = mappings(cfg, n, max(ks))
    pad = 0

    # Warm-up (allocator, kernels, thread pools).
    s, lm, _ = make_student(cfg, teacher, cands[0], None, pad)
    train(s, teacher, lm, data, cfg.proxy.train.model_copy(update={"max_steps": 2}))

    # Naive: each candidate alone; per-candidate proxy distillation time.
    naive = []
    for m in cands:
        s, lm, _ = make_student(cfg, teacher, m, None, pad)
        sync()
        t0 = time.perf_counter()
        train(s, teacher, lm, data, cfg.proxy.train)
        sync()
        naive.append(time.perf_counter() - t0)
    naive_each = statistics.fmean(naive)

    finetune_each = 0.0
    if not args.gpu and not args.no_finetune:
        from layersearch.data.tasks import load_task
        from layersearch.finetune import finetune_all

        datasets = {t: load_task(t, cfg.tasks.source) for t in cfg.tasks.names}
        t0 = time.perf_counter()
        finetune_all(s.base_model, tok, cfg.tasks, datasets)
        finetune_each = time.perf_counter() - t0

    rows = []
    for k in ks:
        students, losses = [], []
        for m in cands[:k]:
            s, lm, _ = make_student(cfg, teacher, m, None, pad)
            students.append(s)
            losses.append(lm)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        train_packed(students, teacher, losses, data, cfg.proxy.train, pad)
        sync()
        packed = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        rows.append((k, packed, mem))

    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}; proxy budget {args.steps} steps x {args.batch} x {args.seq} tokens; "
          f"teacher {n} layers, student {cfg.student.num_layers} layers")
    print(f"naive proxy distillation: {naive_each:.2f} s per candidate "
          f"({3600 / naive_each:.0f} evaluations/hour, distillation phase)")
    if finetune_each:
        print(f"fine-tuning on {', '.join(cfg.tasks.names)}: {finetune_each:.2f} s per candidate")
    header = f"{'K':>3} {'packed s':>9} {'distill evals/h':>16} {'ratio':>6}"
    if finetune_each:
        header += f" {'whole evals/h':>14} {'ratio':>6}"
    if args.gpu:
        header += f" {'peak GiB':>9}"
    print(header)
    for k, packed, mem in rows:
        per = packed / k
        line = f"{k:>3} {packed:>9.2f} {3600 / per:>16.0f} {naive_each / per:>5.2f}x"
        if finetune_each:
            whole_naive = naive_each + finetune_each
            whole_packed = per + finetune_each
            line += f" {3600 / whole_packed:>14.0f} {whole_naive / whole_packed:>5.2f}x"
        if mem is not None:
            line += f" {mem:>9.2f}"
        print(line)


if __name__ == "__main__":
    main()
