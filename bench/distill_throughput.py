"""Distillation throughput, one change per row: from a plain reference loop to layersearch's trainer.

    PYTHONPATH=. python bench/distill_throughput.py [--steps 3] [--repeats 3] [--batch 16] [--seq 128]
    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/distill_throughput.py --clock cpu   # a shared machine

Every row runs in this process on the same blocks of the shared corpus
(``get_slice``), with the offline MiniLM-L6 teacher and a fresh 3-layer student
copied from teacher layers (2, 4, 6), objectives embedding + hidden-state +
attention MSE along the uniform mapping, fp32. Each row adds one change to the
row above it:

1. reference: both models with eager attention, every hidden state and every
   attention map returned (``output_attentions``), attention MSE on those
   maps (probabilities, after softmax), the losses summed in a Python loop of
   ``F.mse_loss``, ``torch.optim.AdamW`` (its per-tensor loop on a CPU);
2. + hooks: ``features.extract`` catches the queries and keys of the mapped
   layers only, no attention map is returned; the probabilities are rebuilt
   as softmax(q k^T / sqrt(d)) for those layers (still eager);
3. + SDPA attention in teacher and student (possible only once no map is
   requested: SDPA returns none);
4. + attention MSE on pre-softmax scores (TinyBERT's definition, what
   ``losses.attention_mse`` computes) instead of probabilities: no softmax
   and no softmax backward. Probabilities need the teacher either to return
   its maps (eager) or to expose q/k to rebuild them; scores can only come
   from q/k, which is why the trainer reads q/k through hooks;
5. + ``DistillLoss`` (float32, pad-masked terms, mean over the mapped pairs)
   instead of the Python loop;
6. + fused AdamW (``distill.adamw``);
7. ``layersearch.distill.train`` itself. Over row 6 it adds only its
   bookkeeping (linear schedule, per-term ``.item()``, the finite-loss check),
   so it should match row 6 within noise; the bench checks that both compute
   the same step-1 loss.

Differences that are no row: every hidden state is returned on both paths
(``extract`` asks for them too and keeps the mapped ones); the reference
passes an all-ones attention mask and ``extract`` passes none, but
transformers 5 drops an all-ones mask itself under both kernels; the trainer's
``cpu_memory.keep_freed_memory`` changes malloc for the whole process and
cannot be undone, so it is applied before every row (run with
``LAYERSEARCH_KEEP_FREED_MEMORY=0`` to measure without it).

The rows are interleaved (1, 2, ..., 7, 1, 2, ...) ``--repeats`` times after
one warm-up pass of ``--warmup`` steps each, since the machine may be shared.
A run is timed from building its optimizer (``train`` builds its own) to its
last step; building the student is not timed. Where other processes compete
for the cores, wall time mostly measures them: ``--clock cpu`` times this
process's CPU seconds instead, which with one thread (``OMP_NUM_THREADS=1``)
is the work a row does, free of the waiting. Each row prints its median
tokens/s (min-max), its ratio to the row above and to row 1 (from the
medians), and the last line is ``trainer vs reference: N.NNx``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from layersearch.config import CorpusConfig, InitConfig, ObjectiveConfig, StudentConfig, TrainConfig
from layersearch.data.slices import get_slice
from layersearch.distill import adamw, micro_batch, train, training_device
from layersearch.features import extract
from layersearch.init import init_student
from layersearch.losses import DistillLoss, scaled_scores
from layersearch.mapping import heuristic
from layersearch.models import build_student, load_teacher, load_tokenizer, student_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OBJECTIVE = ObjectiveConfig(terms={"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0})


@dataclasses.dataclass(frozen=True)
class Row:
    """One path through a training step; each flag is one change to the reference loop."""

    name: str
    hooks: bool = False  # q/k of the mapped layers via features.extract, no attention maps returned
    sdpa: bool = False  # SDPA attention kernel in teacher and student
    scores: bool = False  # attention MSE on pre-softmax scores, not probabilities
    distill_loss: bool = False  # DistillLoss instead of a Python loop of F.mse_loss
    fused: bool = False  # fused AdamW
    trainer: bool = False  # layersearch.distill.train itself


CHANGES = [
    ("reference: eager, all maps, probs, loop, AdamW", {}),
    ("+ hooks: mapped q/k only, no maps", {"hooks": True}),
    ("+ SDPA attention", {"sdpa": True}),
    ("+ MSE on scores, not probabilities", {"scores": True}),
    ("+ DistillLoss, not a Python loop", {"distill_loss": True}),
    ("+ fused AdamW", {"fused": True}),
    ("layersearch.distill.train", {"trainer": True}),
]


def cumulative_rows() -> list[Row]:
    rows, row = [], Row(CHANGES[0][0])
    for name, change in CHANGES:
        row = dataclasses.replace(row, name=name, **change)
        rows.append(row)
    return rows


def attention_maps(model, ids, mask, req, row: Row, heads: int):
    """(hidden states by layer, attention maps by mapped layer) the loop's loss reads."""
    if not row.hooks:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                    output_attentions=True)
        return dict(enumerate(out.hidden_states)), dict(enumerate(out.attentions, start=1))
    feats = extract(model, ids, mask, req)
    maps = {i: scaled_scores(feats.queries[i], feats.keys[i], heads) for i in feats.queries}
    if not row.scores:
        maps = {i: a.softmax(-1) for i, a in maps.items()}
    return feats.hidden, maps


def step_loss(row: Row, student, teacher, loss_module, ids, mask, heads: int) -> torch.Tensor:
    if row.distill_loss:
        with torch.no_grad():
            t = extract(teacher, ids, mask, loss_module.teacher_requirements())
        s = extract(student, ids, mask, loss_module.student_requirements())
        return loss_module(s, t)["total"]
    with torch.no_grad():
        t_hidden, t_maps = attention_maps(teacher, ids, mask, loss_module.teacher_requirements(),
                                          row, heads)
    s_hidden, s_maps = attention_maps(student, ids, mask, loss_module.student_requirements(),
                                      row, heads)
    loss = F.mse_loss(s_hidden[0], t_hidden[0])
    for m, g in loss_module.pairs:
        loss = loss + F.mse_loss(s_hidden[m], t_hidden[g])
        loss = loss + F.mse_loss(s_maps[m], t_maps[g])
    return loss


def run(row: Row, student, teacher, loss_module, data, cfg: TrainConfig) -> float:
    """Train cfg.max_steps steps along ``row``; returns the step-1 loss."""
    if row.trainer:
        return train(student, teacher, loss_module, data, cfg).curves["total"][0][1]
    heads = int(student.config.num_attention_heads)
    torch.manual_seed(cfg.seed)  # as train does: the same dropout masks, so step-1 losses compare
    student.train()
    params = list(student.parameters())
    opt = (adamw(params, cfg.learning_rate, cfg.weight_decay) if row.fused else
           torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay))
    first = float("nan")
    for step in range(cfg.max_steps):
        ids = micro_batch(data, step, cfg.batch_size, cfg.seed).to(student.device)
        mask = torch.ones_like(ids)
        loss = step_loss(row, student, teacher, loss_module, ids, mask, heads)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step == 0:
            first = loss.item()
    return first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row and repeat")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved passes over the rows")
    ap.add_argument("--warmup", type=int, default=1, help="steps per row in the warm-up pass")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time, steadier on a shared machine (use one thread)")
    args = ap.parse_args()
    # Where train runs; on a CPU this also keeps freed memory for the whole process, as train would.
    device, _ = training_device("fp32")
    if args.clock == "cpu" and device.type != "cpu":
        ap.error("--clock cpu times CPU work; on a GPU use --clock wall")

    tok = load_tokenizer("offline:minilm-l6")
    corpus = CorpusConfig(paths=[str(SHARED / "corpus" / "wikitext103")], seq_length=args.seq,
                          cache_dir=str(ROOT / "proxy_data" / "cache"))
    data = get_slice(corpus, tok, 512, seed=0).input_ids
    mapping = heuristic("uniform", 3, 6)
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, learning_rate=1e-4,
                      max_grad_norm=None, warmup_ratio=0.0, precision="fp32", log_every=1)
    init = StudentConfig(num_layers=3, init=InitConfig(method="copy", layers="mapping"))

    teachers = {sdpa: load_teacher("offline:minilm-l6", attentions=not sdpa).to(device)
                for sdpa in (False, True)}
    scfg = student_config(teachers[True].config, init)
    templates = {}
    for sdpa, teacher in teachers.items():
        templates[sdpa] = build_student(scfg, attentions=not sdpa).to(device)
        init_student(templates[sdpa], teacher, init.init, mapping)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()  # kernels are asynchronous: count the work, not its launch
        return time.process_time() if args.clock == "cpu" else time.perf_counter()

    def once(row: Row, train_cfg: TrainConfig) -> tuple[float, float]:
        """(seconds, step-1 loss) of one run; building the student is not timed."""
        loss_module = DistillLoss(OBJECTIVE, mapping, scfg, teachers[row.sdpa].config)
        student = copy.deepcopy(templates[row.sdpa])
        start = clock()
        first = run(row, student, teachers[row.sdpa], loss_module, data, train_cfg)
        return clock() - start, first

    rows = cumulative_rows()
    warm = cfg.model_copy(update={"max_steps": args.warmup})
    for row in rows:
        once(row, warm)
    seconds: dict[str, list[float]] = {r.name: [] for r in rows}
    first_loss: dict[str, float] = {}
    for _ in range(args.repeats):
        for row in rows:
            s, first_loss[row.name] = once(row, cfg)
            seconds[row.name].append(s)

    tokens = args.steps * args.batch * args.seq
    print(f"threads={torch.get_num_threads()} steps={args.steps} batch={args.batch} seq={args.seq} "
          f"repeats={args.repeats} clock={args.clock} (median tokens/s, min-max)")
    print("| row | tokens/s | min-max | vs row above | vs row 1 |\n|---|---|---|---|---|")
    medians = []
    for row in rows:
        rates = [tokens / s for s in seconds[row.name]]
        med = statistics.median(rates)
        above = med / medians[-1] if medians else 1.0
        medians.append(med)
        print(f"| {row.name} | {med:.0f} | {min(rates):.0f}-{max(rates):.0f} | "
              f"{above:.2f}x | {med / medians[0]:.2f}x |")
    loop, trainer = first_loss[rows[-2].name], first_loss[rows[-1].name]
    print(f"step-1 loss, row {len(rows) - 1} vs the trainer: {loop:.6f} vs {trainer:.6f} "
          f"({'same computation' if abs(loop - trainer) <= 1e-5 * abs(trainer) else 'DIFFER'})")
    print(f"trainer vs reference: {medians[-1] / medians[0]:.2f}x")


if __name__ == "__main__":
    main()
