"""Full-distillation throughput on 1 and 2 data-parallel workers, through the real CLI path.

    python bench/distill_scaling.py [--steps 40] [--batch 16] [--seq 64] [--seeds 0,1,2]

Each run is ``layersearch distill`` on the quickstart config (offline MiniLM-L6
teacher, 3-layer student, uniform mapping, fp32) in its own process: one
worker runs in-process, two run on Ray Train's TorchTrainer (gloo on CPU,
NCCL on GPU), with the same global batch. Prints, per worker count, the
steady tokens/s (median of the per-step series after the first quarter, which
holds start-up), the wall time with Ray's start-up, and the final loss (mean of
the last 5 steps), then ``2 workers / 1 worker: Nx`` and the final-loss
difference paired by distillation seed (``distill.train.seed``: the student's
dropout stream), with its 95% interval, so "matches" is a statement about
noise. On a 2-core CPU no speed-up is expected (two workers share two cores);
the point is that two workers run and match one. The runs alternate
(1, 2, 1, 2, ...) so a shared machine's noise falls on both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def run(workdir: Path, workers: int, seed: int, tag: str, args) -> dict:
    raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    raw["corpus"].update(paths=[str(SHARED / "corpus" / "wikitext103")], seq_length=args.seq,
                         cache_dir=str(workdir / "cache"))
    raw["distill"].update(corpus_blocks=max(512, args.batch * 8), workers=workers,
                          output_dir=str(workdir / f"student-{tag}"))
    raw["distill"]["train"].update(max_steps=args.steps, batch_size=args.batch, precision="fp32",
                                   log_every=1, seed=seed)
    raw["tracking"] = {"uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": "scaling"}
    path = workdir / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(raw))
    began = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "layersearch"), "distill", str(path),
                           "--mapping", "uniform"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - began
    if proc.returncode:
        sys.exit(f"{tag} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name("scaling")
    latest = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                max_results=1)[0]
    speed = [m.value for m in sorted(client.get_metric_history(latest.info.run_id, "tokens_per_second"),
                                     key=lambda m: m.step)]
    loss = [m.value for m in sorted(client.get_metric_history(latest.info.run_id, "loss/total"),
                                    key=lambda m: m.step)]
    return {"tokens_per_second": statistics.median(speed[len(speed) // 4:]), "wall": wall,
            "final_loss": statistics.fmean(loss[-5:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2", help="distillation seeds, one run per worker count each")
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for workers in (1, 2):
                results[workers].append(run(Path(tmp), workers, seed, f"w{workers}-s{seed}", args))
                print(f"seed {seed}: {workers} worker(s) {results[workers][-1]}", flush=True)
    print(f"\ncpu cores={os.cpu_count()} steps={args.steps} global batch={args.batch} seq={args.seq} "
          f"seeds={seeds}")
    print("| workers | tokens/s (median, min-max) | wall s with start-up | final loss, mean ± sd over seeds |")
    print("|---|---|---|---|")
    med = {}
    for workers, rows in results.items():
        tps = [x["tokens_per_second"] for x in rows]
        losses = [x["final_loss"] for x in rows]
        med[workers] = statistics.median(tps)
        sd = statistics.stdev(losses) if len(losses) > 1 else float("nan")
        print(f"| {workers} | {med[workers]:,.0f} ({min(tps):,.0f}-{max(tps):,.0f}) | "
              f"{statistics.median([x['wall'] for x in rows]):.0f} | "
              f"{statistics.fmean(losses):.4f} ± {sd:.4f} |")
    print(f"2 workers / 1 worker: {med[2] / med[1]:.2f}x")
    diffs = [b["final_loss"] - a["final_loss"] for a, b in zip(results[1], results[2], strict=True)]
    mean = statistics.fmean(diffs)
    if len(diffs) > 1:
        from scipy import stats

        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        verdict = "indistinguishable" if abs(mean) <= half else "different"
        print(f"final loss, 2 workers - 1 worker, paired by seed: {mean:+.4f} "
              f"[{mean - half:+.4f}, {mean + half:+.4f}] (95%, {len(diffs)} seeds) -> {verdict}")
    else:
        print(f"final loss, 2 workers - 1 worker: {mean:+.4f} (one seed: no interval)")


if __name__ == "__main__":
    main()
