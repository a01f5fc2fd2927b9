"""The first GPU's ten minutes: the figures a lent H100/H200 should produce, in one command.

    .venv/bin/python bench/gpu_suite.py            # on one GPU, under about 8 minutes
    .venv/bin/python bench/gpu_suite.py --smoke    # the same code at toy sizes, on a CPU (the test runs it)

A random-weight bert-base-shaped teacher (``BertConfig()``: 12 layers, 768
wide) and TinyBERT's 4L-312 student, so no hub is needed. It prints:

- model-FLOPs utilisation (MFU) of a packed proxy distillation at K = 1, 4, 8
  students per teacher forward;
- tokens/s and MFU of the full distillation's training step;
- seconds per unit of each readout (finetune, probe, agreement) on SST-2;
- bf16 vs fp32 agreement on the probe readout: the same student distilled in
  each precision, its dev predictions compared one by one.

FLOPs per token are the usual dense estimate: 6 x a student's non-embedding
parameters (forward and backward) plus 2 x the teacher's (forward only),
plus the attention score and value products (12 x layers x width x sequence
for a trained model, 4 x for the teacher). MFU is that over the device's
dense bf16 peak (H100/H200: 989 TFLOP/s); on other devices it prints
tokens/s and no MFU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

from layersearch.config import load_config
from layersearch.mapping import Mapping

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def flops_per_token(student, teacher, seq: int, pack: int = 1) -> float:
    def dense(model):
        return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)

    def attention(cfg):
        return cfg.num_hidden_layers * cfg.hidden_size * seq

    s, t = student.config, teacher.config
    return pack * (6 * dense(student) + 12 * attention(s)) + 2 * dense(teacher) + 4 * attention(t)


def sizes(smoke: bool) -> dict:
    if smoke:
        return {"teacher": BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=128),
                "student": ["student.num_layers=2", "student.hidden_size=32", "student.num_attention_heads=4",
                            "student.intermediate_size=64"],
                "genes": (2, 4), "packs": (1, 2), "steps": 3, "batch": 4, "seq": 32, "blocks": 16,
                "examples": 32}
    return {"teacher": BertConfig(), "student": ["student.num_layers=4", "student.hidden_size=312",
                                                 "student.num_attention_heads=12", "student.intermediate_size=1200"],
            "genes": (3, 6, 9, 12), "packs": (1, 4, 8), "steps": 30, "batch": 32, "seq": 128, "blocks": 2048,
            "examples": 2000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on a CPU, the same code")
    args = ap.parse_args()
    from layersearch.distill import train
    from layersearch.distill.packed import train_packed
    from layersearch.models import load_tokenizer
    from layersearch.student import make_student

    size = sizes(args.smoke)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    precision = "bf16" if device == "cuda" else "fp32"
    torch.manual_seed(0)
    teacher = BertModel(size["teacher"], add_pooling_layer=False).to(device).eval()
    n = size["teacher"].num_hidden_layers
    cfg = load_config(str(ROOT / "configs" / "quickstart.yaml"), [
        *size["student"], "student.init.method=random", "tasks.readout=finetune", "proxy.slice_seeds=[0]",
        "search.racing=null", f"corpus.seq_length={size['seq']}",
        f"proxy.train.batch_size={size['batch']}", f"proxy.train.max_steps={size['steps']}",
        f"proxy.train.precision={precision}", f"tasks.finetune.precision={precision}",
        f"tasks.finetune.train_examples={size['examples']}", f"tasks.probe.train_examples={size['examples']}",
        f"tasks.finetune.dev_examples={32 if args.smoke else 256}", "tasks.names=[sst2]",
        f"tasks.agreement.heldout_blocks={32 if args.smoke else 128}"])
    mapping = Mapping(size["genes"], n)
    data = torch.randint(1000, 30000, (size["blocks"], size["seq"]))
    peak = peak_flops(device)
    print(f"{device} ({torch.cuda.get_device_name() if device == 'cuda' else 'no GPU'}), {precision}; teacher "
          f"{n}L-{size['teacher'].hidden_size}, student {cfg.student.num_layers}L-{cfg.student.hidden_size}, "
          f"{size['batch']} x {size['seq']} tokens per step", flush=True)

    def mfu(tokens_per_s: float, flops: float) -> str:
        return f"MFU {100 * tokens_per_s * flops / peak:.1f}%" if peak else "MFU n/a (peak unknown here)"

    # 1. Packed proxy distillation at each K.
    for k in size["packs"]:
        built = [make_student(cfg, teacher, mapping, data) for _ in range(k)]
        students, losses = [b[0] for b in built], [b[1] for b in built]
        start = time.perf_counter()
        results = train_packed(students, teacher, losses, data, cfg.proxy.train)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        bad = [r for r in results if isinstance(r, Exception)]
        if bad:
            raise SystemExit(f"packed distillation failed: {bad[0]}")
        tokens = sum(r.tokens for r in results) / k  # teacher tokens: one pass serves the pack
        rate = tokens / seconds
        print(f"packed proxy distillation K={k}: {rate:,.0f} teacher tokens/s, "
              f"{mfu(rate, flops_per_token(students[0], teacher, size['seq'], k))}", flush=True)
    # 2. The full distillation's step (the same trainer, one student).
    student, loss, _ = make_student(cfg, teacher, mapping, data)
    result = train(student, teacher, loss, data, cfg.proxy.train)
    rate = result.tokens / result.seconds
    print(f"full distillation step: {rate:,.0f} tokens/s, {mfu(rate, flops_per_token(student, teacher, size['seq']))}",
          flush=True)
    # 3. Seconds per unit of each readout, on that student.
    from layersearch.data.tasks import load_task
    from layersearch.readout import make_readout
    from layersearch.readout.finetune import TaskEncodings

    tokenizer = load_tokenizer(cfg.teacher.model)
    datasets = {"sst2": load_task("sst2", cfg.tasks.source)}
    preds = {}
    for readout in ("finetune", "probe", "agreement"):
        rcfg = cfg.model_copy(update={"tasks": cfg.tasks.model_copy(update={"readout": readout})})
        encoded = TaskEncodings(tokenizer, datasets, rcfg.tasks.finetune)
        reader = make_readout(rcfg, tokenizer, datasets, encoded, device, teacher)
        start = time.perf_counter()
        out = reader.score(student.base_model, [0])
        print(f"readout {readout}: {time.perf_counter() - start:.1f} s per unit", flush=True)
        if readout == "probe":
            preds["probe"] = out[0].predictions
    # 4. bf16 vs fp32 on the probe: the same student distilled in each precision.
    probe_cfg = cfg.model_copy(update={"tasks": cfg.tasks.model_copy(update={"readout": "probe"})})
    reader = make_readout(probe_cfg, tokenizer, datasets, None, device, teacher)
    got = {}
    for value in ("fp32", "bf16"):
        st, lo, _ = make_student(cfg, teacher, mapping, data)
        train(st, teacher, lo, data, cfg.proxy.train.model_copy(update={"precision": value}))
        got[value] = reader.score(st.base_model, [0])[0]
    same = float(np.mean(got["fp32"].predictions == got["bf16"].predictions))
    print(f"probe bf16 vs fp32: {100 * same:.1f}% of {len(got['fp32'].predictions)} dev predictions identical; "
          f"accuracy {got['fp32'].score:.3f} fp32, {got['bf16'].score:.3f} bf16", flush=True)


if __name__ == "__main__":
    main()
