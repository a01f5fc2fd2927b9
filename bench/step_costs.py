"""Per-step costs of a proxy distillation at a config's shape, and what they say of bert-base.

    .venv/bin/python bench/step_costs.py [--config configs/mpnet-base-4l312.yaml] [--steps 5]

Times, on the config's real teacher and corpus blocks, the two halves of one
proxy step (``proxy.train.batch_size`` x ``corpus.seq_length``): the
teacher's forward (what the objective reads) and the student's forward,
backward and optimizer step. Each is timed ``--steps`` times after one
warm-up, as wall and CPU seconds (``time.process_time``: steadier on a shared
machine), and printed with its ratio to the other. Then it counts each half's
FLOPs (2 x parameters x tokens per forward, 3x that for a training step, plus
attention's 4 T^2 H per layer) and states the CPU's achieved rate, and from
it the seconds per step of the bert-base recipe (configs/bert-base-4l312.yaml:
bert-base teacher, 4L-312 student, its batch and sequence length) on this CPU,
and on a GPU at an assumed sustained rate (``--gpu-tflops``, a stated
assumption, not a measurement: no GPU ran this bench).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from layersearch.config import load_config
from layersearch.families import dims
from layersearch.features import extract
from layersearch.mapping import heuristic
from layersearch.models import load_teacher_for, load_tokenizer
from layersearch.student import make_student


def flops(d, tokens: int, seq: int, train: bool) -> float:
    """Forward FLOPs of an encoder's layers on ``tokens`` tokens (x3 for forward + backward)."""
    per_layer = 2 * tokens * (4 * d.hidden * d.hidden + 2 * d.hidden * d.ffn) + 4 * tokens * seq * d.hidden
    return d.layers * per_layer * (3 if train else 1)


def timed(fn, steps: int) -> tuple[float, float]:
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mpnet-base-4l312.yaml")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--gpu-tflops", type=float, default=100.0,
                    help="assumed sustained bf16 rate of one GPU for the extrapolation (A100/H100 class)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    batch, seq = cfg.proxy.train.batch_size, cfg.corpus.seq_length
    teacher = load_teacher_for(cfg)
    tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size - 1, (batch * 4, seq), generator=gen)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    mask = torch.ones_like(ids)
    t_dims = dims(teacher.config)
    mapping = heuristic("uniform", cfg.student.num_layers, t_dims.layers)
    student, loss, _ = make_student(cfg, teacher, mapping, ids, tokenizer.pad_token_id or 0, tokenizer)
    s_dims = dims(student.config)
    opt = torch.optim.AdamW([*student.parameters(), *loss.parameters()], lr=1e-4)
    x, m = ids[:batch], mask[:batch]
    with torch.no_grad():
        targets = extract(teacher, x, m, loss.teacher_requirements())

    def teacher_pass():
        with torch.no_grad():
            extract(teacher, x, m, loss.teacher_requirements())

    def student_step():
        out = loss(extract(student, x, m, loss.student_requirements()), targets)["total"]
        out.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    threads = torch.get_num_threads()
    t_wall, t_cpu = timed(teacher_pass, args.steps)
    s_wall, s_cpu = timed(student_step, args.steps)
    tokens = batch * seq
    t_flops, s_flops = flops(t_dims, tokens, seq, False), flops(s_dims, tokens, seq, True)
    print(f"{args.config}: teacher {t_dims.layers}L-{t_dims.hidden} ({teacher.config.model_type}), "
          f"student {s_dims.layers}L-{s_dims.hidden}, batch {batch} x {seq} tokens, {threads} threads")
    print(f"  teacher forward           {t_wall:7.3f} s wall  {t_cpu:7.3f} s CPU  {t_flops / 1e9:8.1f} GFLOP")
    print(f"  student fwd+bwd+step      {s_wall:7.3f} s wall  {s_cpu:7.3f} s CPU  {s_flops / 1e9:8.1f} GFLOP")
    print(f"  teacher share of a live step: {t_wall / (t_wall + s_wall):.0%} (wall); "
          f"teacher vs student: {t_wall / s_wall:.1f}x")
    rate = t_flops / t_wall  # the teacher's dense matmuls: the CPU's achieved rate
    print(f"  achieved: teacher {rate / 1e9:.1f} GFLOP/s, student {s_flops / s_wall / 1e9:.1f} GFLOP/s")

    # The bert-base recipe: bert-base (12L-768, FFN 3072) -> its student, at its own batch and length.
    base = load_config("configs/bert-base-4l312.yaml")
    from layersearch.families import Dims

    b_t = Dims(12, 768, 12, 3072)
    b_s = Dims(base.student.num_layers, base.student.hidden_size, base.student.num_attention_heads,
               base.student.intermediate_size)
    b_seq = base.corpus.seq_length
    cpu_rate = (t_flops + s_flops) / (t_wall + s_wall)
    gpu_rate = args.gpu_tflops * 1e12 * 0.4  # 40% of the sustained rate: small matmuls, hooks, optimizer
    for name, train in (("proxy", base.proxy.train), ("distill", base.distill.train)):
        tok = train.batch_size * b_seq
        live = flops(b_t, tok, b_seq, False) + flops(b_s, tok, b_seq, True)
        alone = flops(b_s, tok, b_seq, True)  # the student's part: a proxy step with teacher targets cached
        print(f"  bert-base recipe {name}: {train.max_steps} steps of {train.batch_size} x {b_seq}, "
              f"{live / 1e12:.2f} TFLOP a live step ({alone / 1e12:.2f} student-only): "
              f"{live / cpu_rate:.1f} s a step here ({train.max_steps * live / cpu_rate / 3600:.1f} h); "
              f"{live / gpu_rate * 1e3:.0f} ms a step on one GPU at 40% of {args.gpu_tflops:.0f} TFLOP/s "
              f"({train.max_steps * live / gpu_rate / 3600:.2f} GPU-h live, "
              f"{train.max_steps * alone / gpu_rate / 3600:.2f} GPU-h student-only; an estimate)")

if __name__ == "__main__":
    main()
