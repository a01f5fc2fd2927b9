"""Search throughput: packed evaluation (K students per teacher pass) against one at a time.

    python bench/search_throughput.py                 # CPU: offline MiniLM-L6 teacher, 3-layer students
                                                      # of the teacher's width (384) and of half (192)
    python bench/search_throughput.py --gpu           # GPU: bert-base-shaped teacher (random init),
                                                      # 4-layer 312-wide students, bf16

Same data, same proxy budget, one process. For K = 1, 2, 4, 8 it times the
proxy distillation of K candidates packed (one teacher forward per batch,
only the mapped layers' tensors requested, SDPA attention) against the naive
path (each candidate trained alone by ``distill.train``, its own teacher pass
per batch), and prints evaluations per hour and the ratio. Whole evaluations
add each candidate's fine-tuning on the proxy tasks, which packing does not
share.

Packing can only save the teacher's share of a naive evaluation, so the bench
also times the teacher's forward passes alone and prints the bound that share
puts on the ratio (Amdahl): 1 / (1 - f + f / K) for a teacher share f.
Timings repeat (``--repeats``, 3 by default), naive and packed back to back
in each repeat; the table shows the median ratio and its range.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from layersearch.config import parse_config
from layersearch.distill import micro_batch, total_steps, train, training_device
from layersearch.distill.packed import train_packed
from layersearch.features import extract
from layersearch.mapping import Mapping
from layersearch.student import make_student

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cpu_student(width: int, teacher_width: int) -> dict:
    """A 3-layer student: the teacher's own shape copied by mapping, or a narrower
    TinyBERT-like one (12 heads, FFN 4x width, random init: timing does not depend on init)."""
    if width == teacher_width:
        return {"num_layers": 3, "init": {"method": "copy"}}
    return {"num_layers": 3, "hidden_size": width, "num_attention_heads": 12,
            "intermediate_size": 4 * width, "init": {"method": "random"}}


def cpu_setup(args, width: int):
    from layersearch.data.slices import get_slice
    from layersearch.models import load_teacher, load_tokenizer

    teacher = load_teacher("offline:minilm-l6", attentions=False)
    tok = load_tokenizer("offline:minilm-l6")
    raw = {
        "teacher": {"model": "offline:minilm-l6"},
        "student": cpu_student(width, teacher.config.hidden_size),
        "corpus": {"paths": [str(SHARED / "corpus" / "wikitext103")], "seq_length": args.seq,
                   "cache_dir": str(ROOT / "proxy_data" / "cache")},
        "proxy": {"train": {"max_steps": args.steps, "batch_size": args.batch, "precision": args.precision}},
        "tasks": {"source": str(SHARED / "glue"), "names": ["sst2", "mrpc", "rte"],
                  "finetune": {"train_examples": args.ft_examples, "dev_examples": args.ft_examples // 2,
                               "seq_length": args.seq}},
    }
    cfg = parse_config(raw)
    data = get_slice(cfg.corpus, tok, 256, seed=0).input_ids
    return cfg, teacher, tok, data


def gpu_setup(args, width: int):
    from transformers import BertConfig

    from layersearch.models import build_student

    torch.manual_seed(0)
    tcfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    teacher = build_student(tcfg, attentions=False).cuda().eval()
    raw = {
        "student": {"num_layers": 4, "hidden_size": width, "num_attention_heads": 12,
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


def teacher_seconds(teacher, loss_module, data, cfg) -> float:
    """The teacher's forward passes of one naive proxy distillation, alone."""
    device, autocast = training_device(cfg.precision)
    req = loss_module.teacher_requirements()
    sync()
    t0 = time.perf_counter()
    for index in range(total_steps(cfg, data.shape[1]) * cfg.grad_accum_steps):
        ids = micro_batch(data, index, cfg.batch_size, cfg.seed).to(device)
        with autocast, torch.no_grad():
            extract(teacher, ids, torch.ones_like(ids), req)
    sync()
    return time.perf_counter() - t0


def run_shape(args, width: int, ks: list[int]) -> dict[int, float]:
    """Bench one student shape; prints its table and returns K -> distillation ratio."""
    cfg, teacher, tok, data = gpu_setup(args, width) if args.gpu else cpu_setup(args, width)
    n = teacher.config.num_hidden_layers
    cands = mappings(cfg, n, max(ks))
    pad = 0

    # Warm-up (allocator, kernels, thread pools).
    s, lm, _ = make_student(cfg, teacher, cands[0], None, pad)
    train(s, teacher, lm, data, cfg.proxy.train.model_copy(update={"max_steps": 2}))

    def naive_run(m) -> float:
        s, lm, _ = make_student(cfg, teacher, m, None, pad)
        sync()
        t0 = time.perf_counter()
        train(s, teacher, lm, data, cfg.proxy.train)
        sync()
        return time.perf_counter() - t0

    def packed_run(k) -> tuple[float, float | None]:
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
        mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return time.perf_counter() - t0, mem

    # Each repeat times the naive path (every candidate alone) and then every K, back to
    # back, so each ratio compares runs minutes apart at most; the table shows medians.
    naive_means, packed_times, mems = [], {k: [] for k in ks}, {}
    for _ in range(args.repeats):
        naive_means.append(statistics.fmean(naive_run(m) for m in cands))
        for k in ks:
            seconds, mems[k] = packed_run(k)
            packed_times[k].append(seconds)
    naive_each = statistics.median(naive_means)
    ratios_each = {k: [n / (p / k) for n, p in zip(naive_means, packed_times[k], strict=True)] for k in ks}

    s = make_student(cfg, teacher, cands[0], None, pad)[0]
    share = statistics.fmean(teacher_seconds(teacher, make_student(cfg, teacher, m, None, pad)[1], data,
                                             cfg.proxy.train) for m in cands) / naive_each

    finetune_each = 0.0
    if not args.gpu and not args.no_finetune:
        from layersearch.data.tasks import load_task
        from layersearch.readout.finetune import finetune_all

        datasets = {t: load_task(t, cfg.tasks.source) for t in cfg.tasks.names}
        t0 = time.perf_counter()
        finetune_all(s.base_model, tok, cfg.tasks, datasets)
        finetune_each = time.perf_counter() - t0

    rows = [(k, statistics.median(packed_times[k]), mems[k]) for k in ks]

    sc = s.config
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n== student {sc.num_hidden_layers} layers x {sc.hidden_size} wide ({sc.num_attention_heads} heads, "
          f"FFN {sc.intermediate_size}); teacher {n} layers x {teacher.config.hidden_size} ==")
    print(f"device: {device}; {cfg.proxy.train.precision}; proxy budget {args.steps} steps x {args.batch} x "
          f"{args.seq} tokens")
    print(f"naive proxy distillation: {naive_each:.2f} s per candidate "
          f"({3600 / naive_each:.0f} evaluations/hour, distillation phase); "
          f"teacher forward share f = {share:.2f}")
    if finetune_each:
        print(f"fine-tuning on {', '.join(cfg.tasks.names)}: {finetune_each:.2f} s per candidate")
    print(f"median of {args.repeats} repeats; 'range' is the lowest and highest ratio over the repeats")
    header = f"{'K':>3} {'packed s':>9} {'distill evals/h':>16} {'ratio':>6} {'range':>12} {'bound':>6}"
    if finetune_each:
        header += f" {'whole evals/h':>14} {'ratio':>6}"
    if args.gpu:
        header += f" {'peak GiB':>9}"
    print(header)
    ratios = {}
    for k, packed, mem in rows:
        per = packed / k
        ratios[k] = statistics.median(ratios_each[k])
        spread = f"{min(ratios_each[k]):.2f}-{max(ratios_each[k]):.2f}x"
        bound = 1 / (1 - share + share / k)
        line = f"{k:>3} {packed:>9.2f} {3600 / per:>16.0f} {ratios[k]:>5.2f}x {spread:>12} {bound:>5.2f}x"
        if finetune_each:
            whole_naive = naive_each + finetune_each
            whole_packed = per + finetune_each
            line += f" {3600 / whole_packed:>14.0f} {whole_naive / whole_packed:>5.2f}x"
        if mem is not None:
            line += f" {mem:>9.2f}"
        print(line)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--widths", default=None,
                    help="student widths, comma-separated (CPU default 384,192; GPU default 312)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="CPU only; GPU runs bf16")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats; the table shows medians")
    ap.add_argument("--ft-examples", type=int, default=256)
    ap.add_argument("--no-finetune", action="store_true")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    widths = [int(w) for w in (args.widths or ("312" if args.gpu else "384,192")).split(",")]
    summary = {w: run_shape(args, w, ks) for w in widths}
    print("\ndistillation-phase ratio, packed vs naive: " + "; ".join(
        f"width {w}: " + ", ".join(f"K={k} {r:.2f}x" for k, r in rs.items()) for w, rs in summary.items()))


if __name__ == "__main__":
    main()
