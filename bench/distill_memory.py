"""Peak memory of a distillation against corpus size: streamed blocks vs today's tensor.

    python bench/distill_memory.py [--steps 20] [--batch 16] [--seq 64] [--copies 10] [--with-cached]

Two corpora: the shared WikiText-103 files, and one ``--copies`` times larger
built in a temporary folder (each copy's lines carry a prefix, so the text
differs). Both are tokenized first, in their own subprocess, into a private
datasets cache (not measured). Then each distillation (offline MiniLM-L6
teacher, 3-layer student copied from layers (2, 4, 6), ``--steps`` steps) runs
in a fresh subprocess that prints its peak resident memory (ru_maxrss):

- streamed: ``open_blocks(corpus, tok, None, 0)``, rows read from the
  memory-mapped Arrow cache per batch;
- in memory, slice built: ``get_slice(corpus, tok, None, 0).input_ids`` with an
  empty slice cache, as a first ``layersearch distill`` run does today;
- in memory, slice cached (``--with-cached``): the same, reading the slice
  saved beforehand (int32 file, then an int64 copy).

Prints each run's peak, the peak once the data is open (before the models
load: what the data alone costs), and ``rss ratio`` (larger / smaller corpus,
whole-run peaks) per path; the goal for the streamed path is at most 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GOAL = 1.2


def _corpus(path: str, seq: int, cache_dir: str):
    from layersearch.config import CorpusConfig

    return CorpusConfig(paths=[path], seq_length=seq, cache_dir=cache_dir, format="wikitext")


def child_prepare(args) -> None:
    """Tokenize (datasets cache) and save the in-memory slice (slice cache) of one corpus."""
    from layersearch.data.corpus import load_blocks
    from layersearch.data.slices import get_slice
    from layersearch.models import load_tokenizer

    tok = load_tokenizer("offline:minilm-l6")
    corpus = _corpus(args.corpus, args.seq, args.slices)
    blocks = len(load_blocks(corpus, tok))
    if args.with_cached:
        get_slice(corpus, tok, None, 0)
    print(json.dumps({"blocks": blocks}))


def child_distill(args) -> None:
    import numpy as np
    import torch

    from layersearch.config import InitConfig, ObjectiveConfig, StudentConfig, TrainConfig
    from layersearch.data.blocks import open_blocks
    from layersearch.data.slices import get_slice
    from layersearch.distill import train
    from layersearch.init import init_student
    from layersearch.losses import DistillLoss
    from layersearch.mapping import heuristic
    from layersearch.models import build_student, load_teacher, load_tokenizer, student_config

    tok = load_tokenizer("offline:minilm-l6")
    corpus = _corpus(args.corpus, args.seq, args.slices)
    read_ms = None
    if args.mode == "stream":
        data = open_blocks(corpus, tok, None, 0)
        rows = torch.from_numpy(np.random.default_rng(0).integers(0, len(data), 256))
        data[rows]
        began = time.perf_counter()
        for _ in range(10):
            data[rows]
        read_ms = (time.perf_counter() - began) * 100  # ms per 256-row read
    else:
        data = get_slice(corpus, tok, None, 0).input_ids
    data_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    teacher = load_teacher("offline:minilm-l6", attentions=False)
    mapping = heuristic("uniform", 3, teacher.config.num_hidden_layers)
    scfg_base = StudentConfig(num_layers=3, init=InitConfig(method="copy", layers="mapping"))
    scfg = student_config(teacher.config, scfg_base)
    student = build_student(scfg, attentions=False)
    init_student(student, teacher, scfg_base.init, mapping)
    loss = DistillLoss(ObjectiveConfig(terms={"embedding_mse": 1.0, "hidden_mse": 1.0}),
                       mapping, scfg, teacher.config)
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, warmup_ratio=0.0, precision="fp32")
    result = train(student, teacher, loss, data, cfg)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak_mb, "data_mb": data_mb, "blocks": len(data), "train_s": result.seconds,
                      "read_ms": read_ms, "loss": result.final_loss}))


def _run(args, env: dict, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch),
           "--seq", str(args.seq), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"child {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_large(src: Path, dest: Path, copies: int) -> None:
    """``copies`` copies of the WikiText files, each content line prefixed so the copies differ."""
    from layersearch.data.corpus import clean_wikitext

    dest.mkdir(parents=True)
    for k in range(copies):
        for f in sorted(src.iterdir()):
            lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
            # Headings and blanks stay as they are, so WikiText cleaning treats them alike.
            out = [ln if clean_wikitext(ln) is None else f" copy{k} {ln.lstrip()}" for ln in lines]
            (dest / f"{f.name}.copy{k}").write_text("".join(out), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--with-cached", action="store_true", help="also the cached-slice baseline")
    ap.add_argument("--child", choices=["prepare", "distill"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["stream", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--slices", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "prepare":
        return child_prepare(args)
    if args.child == "distill":
        return child_distill(args)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distill_memory-") as tmp:
        tmp = Path(tmp)
        small = SHARED / "corpus" / "wikitext103"
        large = tmp / f"wikitext103x{args.copies}"
        build_large(small, large, args.copies)
        # A private datasets cache: the bench leaves nothing in the user's.
        env = {**os.environ, "HF_DATASETS_CACHE": str(tmp / "hf"), "PYTHONPATH": str(ROOT),
               "TOKENIZERS_PARALLELISM": "false"}
        cached = str(tmp / "slices")
        sizes = {}
        for name, path in (("corpus", small), (f"corpus x{args.copies}", large)):
            flag = ["--with-cached"] if args.with_cached else []
            sizes[name] = (path, _run(args, env, "--child", "prepare", "--corpus", str(path),
                                      "--slices", cached, *flag)["blocks"])
        prepared = time.perf_counter() - began
        print(f"steps={args.steps} batch={args.batch} seq={args.seq}; tokenizing took {prepared:.0f} s")
        paths = [("streamed (open_blocks)", "stream", None),
                 ("in memory, slice built (get_slice)", "memory", "fresh"),
                 ("in memory, slice cached (get_slice)", "memory", cached)][:3 if args.with_cached else 2]
        for label, mode, slices in paths:
            peaks, opened = [], []
            for i, (name, (path, blocks)) in enumerate(sizes.items()):
                where = str(tmp / f"fresh-{mode}-{i}") if slices == "fresh" else cached
                out = _run(args, env, "--child", "distill", "--mode", mode, "--corpus", str(path),
                           "--slices", where)
                peaks.append(out["peak_mb"])
                opened.append(out["data_mb"])
                read = f", 256-row read {out['read_ms']:.2f} ms" if out["read_ms"] is not None else ""
                print(f"{label:36s} {name:11s} {blocks:>9,} blocks  peak rss {out['peak_mb']:6.0f} MB"
                      f" (data open {out['data_mb']:5.0f} MB; {out['train_s']:.0f} s training{read})")
            ratio = peaks[1] / peaks[0]
            verdict = "" if mode == "memory" else (" (goal <= 1.2: met)" if ratio <= GOAL else " (goal <= 1.2: MISSED)")
            print(f"{label:36s} rss ratio: {ratio:.2f}{verdict}; data open ratio {opened[1] / opened[0]:.2f}")
    print(f"wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
