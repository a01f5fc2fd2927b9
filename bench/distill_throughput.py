"""Distillation throughput: layersearch's trainer against a plain reference loop.

    python bench/distill_throughput.py [--steps 8] [--batch 16] [--seq 128]

Both run in this process on the same blocks of the shared corpus, with the
offline MiniLM-L6 teacher and a 3-layer student copied from layers (2, 4, 6),
objectives embedding + hidden-state + attention-score MSE.

The reference is what a first distillation script looks like: both models in
fp32 with eager attention, every hidden state and attention map requested,
losses summed in a Python loop over the mapped pairs (attention MSE on the
returned maps). The trainer reads only the mapped layers' tensors through
hooks and keeps the SDPA kernel. Prints tokens/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from layersearch.config import CorpusConfig, InitConfig, ObjectiveConfig, StudentConfig, TrainConfig
from layersearch.data.slices import get_slice
from layersearch.distill import micro_batch, train
from layersearch.init import init_student
from layersearch.losses import DistillLoss
from layersearch.mapping import heuristic
from layersearch.models import build_student, load_teacher, load_tokenizer, student_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OBJECTIVE = ObjectiveConfig(terms={"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0})


def reference_loop(student, teacher, data, cfg: TrainConfig, mapping) -> float:
    """The naive loop; returns seconds for cfg.max_steps steps."""
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.learning_rate)
    student.train()
    start = time.perf_counter()
    for step in range(cfg.max_steps):
        ids = micro_batch(data, step, cfg.batch_size, cfg.seed)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        output_attentions=True)
        s = student(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                    output_attentions=True)
        loss = F.mse_loss(s.hidden_states[0], t.hidden_states[0])
        for m, g in mapping.pairs():
            loss = loss + F.mse_loss(s.hidden_states[m], t.hidden_states[g])
            loss = loss + F.mse_loss(s.attentions[m - 1], t.attentions[g - 1])
        loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)

    tok = load_tokenizer("offline:minilm-l6")
    corpus = CorpusConfig(paths=[str(SHARED / "corpus" / "wikitext103")], seq_length=args.seq,
                          cache_dir=str(Path(__file__).resolve().parents[1] / "proxy_data" / "cache"))
    data = get_slice(corpus, tok, 512, seed=0).input_ids
    mapping = heuristic("uniform", 3, 6)
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, learning_rate=1e-4,
                      max_grad_norm=None, warmup_ratio=0.0, precision="fp32")
    scfg_base = StudentConfig(num_layers=3, init=InitConfig(method="copy", layers="mapping"))

    # Reference: eager attention everywhere, all maps and hidden states returned.
    teacher_eager = load_teacher("offline:minilm-l6", attentions=True)
    ref_student = build_student(student_config(teacher_eager.config, scfg_base), attentions=True)
    init_student(ref_student, teacher_eager, scfg_base.init, mapping)
    warm = cfg.model_copy(update={"max_steps": args.warmup})
    reference_loop(copy.deepcopy(ref_student), teacher_eager, data, warm, mapping)
    ref_seconds = reference_loop(ref_student, teacher_eager, data, cfg, mapping)

    # layersearch's trainer: SDPA, hooks on the mapped layers only.
    teacher = load_teacher("offline:minilm-l6", attentions=False)
    scfg = student_config(teacher.config, scfg_base)

    def fresh():
        student = build_student(scfg, attentions=False)
        init_student(student, teacher, scfg_base.init, mapping)
        return student, DistillLoss(OBJECTIVE, mapping, scfg, teacher.config)

    s, lossm = fresh()
    train(s, teacher, lossm, data, warm)
    s, lossm = fresh()
    result = train(s, teacher, lossm, data, cfg)

    tokens = args.steps * args.batch * args.seq
    ref_tps, ours_tps = tokens / ref_seconds, tokens / result.seconds
    print(f"threads={torch.get_num_threads()} steps={args.steps} batch={args.batch} seq={args.seq}")
    print(f"reference loop (fp32 eager, all maps):  {ref_tps:9.0f} tokens/s  ({ref_seconds:.1f} s)")
    print(f"layersearch trainer (SDPA, hooks):      {ours_tps:9.0f} tokens/s  ({result.seconds:.1f} s)")
    print(f"ratio trainer / reference:              {ours_tps / ref_tps:9.2f}x")


if __name__ == "__main__":
    main()
