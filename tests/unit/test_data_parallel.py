"""The trainer on two gloo workers (torch.multiprocessing): the same math as one worker, exact resume.

Ray Train only starts the processes and the process group; what is tested here
is the trainer's own part: equal shares of each batch, DDP over student and
projections, reduced logs, per-worker random states in checkpoints.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import BertConfig

from layersearch.config import ObjectiveConfig, TrainConfig
from layersearch.distill import train
from layersearch.losses import DistillLoss
from layersearch.mapping import Mapping
from layersearch.models import build_student

OBJ = ObjectiveConfig(terms={"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0})
DATA = torch.randint(1, 60, (48, 12), generator=torch.Generator().manual_seed(1))
CFG = TrainConfig(max_steps=20, batch_size=8, learning_rate=1e-3, seed=3, precision="fp32")
ACCUM = CFG.model_copy(update={"grad_accum_steps": 2})


def _pair(dropout: float):
    torch.manual_seed(0)
    tcfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    teacher = build_student(tcfg, attentions=False).eval()
    # A narrower student: hidden_mse goes through projections, which DDP must average too.
    scfg = BertConfig(**{**tcfg.to_dict(), "num_hidden_layers": 2, "hidden_size": 16,
                         "num_attention_heads": 4, "intermediate_size": 32})
    student = build_student(scfg, attentions=False)
    return student, teacher, DistillLoss(OBJ, Mapping((2, 4), 4), scfg, tcfg)


def _weights(student, loss) -> dict:
    return {**{f"s.{k}": v.tolist() for k, v in student.state_dict().items()},
            **{f"l.{k}": v.tolist() for k, v in loss.state_dict().items()}}


def _worker(rank: int, world: int, root: str, mode: str, dropout: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/pg-{mode}", rank=rank,
                            world_size=world)
    try:
        student, teacher, loss = _pair(dropout)
        ckpt = Path(root) / f"ckpt-{mode}"
        cfg = ACCUM if mode == "accum" else CFG
        synced_locally = []
        no_sync = torch.nn.parallel.DistributedDataParallel.no_sync

        def counted(self):
            synced_locally.append(1)
            return no_sync(self)

        torch.nn.parallel.DistributedDataParallel.no_sync = counted
        if mode == "resumed":
            train(student, teacher, loss, DATA, CFG.model_copy(update={"checkpoint_every": 50}),
                  checkpoint_dir=ckpt, stop_after=7)
            student, teacher, loss = _pair(dropout)  # fresh objects: all state from the checkpoint
        result = train(student, teacher, loss, DATA, cfg, checkpoint_dir=ckpt, resume=True)
        if rank == 0:
            (Path(root) / f"{mode}.json").write_text(json.dumps(
                {"curves": result.curves, "weights": _weights(student, loss), "no_sync": len(synced_locally)}))
        del student, teacher, loss, result
    finally:
        # DDP's reducer must be gone before its process group: a reducer freed later aborts.
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def _spawn(tmp_path: Path, mode: str, dropout: float) -> dict:
    mp.spawn(_worker, args=(2, str(tmp_path), mode, dropout), nprocs=2, join=True)
    return json.loads((tmp_path / f"{mode}.json").read_text())


@pytest.mark.parametrize("mode", ["plain", "accum"])
def test_two_workers_with_half_batches_follow_one_worker(tmp_path, mode):
    """Also with gradient accumulation, where the first micro-step of each optimizer step keeps
    its gradients local (DDP ``no_sync``) and the last all-reduces the sum."""
    cfg = ACCUM if mode == "accum" else CFG
    student, teacher, loss = _pair(dropout=0.0)  # dropout off: the only difference is the split
    one = train(student, teacher, loss, DATA, cfg)
    two = _spawn(tmp_path, mode, dropout=0.0)
    assert two["no_sync"] == (cfg.max_steps * (cfg.grad_accum_steps - 1))
    assert set(two["curves"]) == set(one.curves)
    for key, points in one.curves.items():
        assert [s for s, _ in two["curves"][key]] == [s for s, _ in points]
        assert [v for _, v in two["curves"][key]] == pytest.approx([v for _, v in points],
                                                                   rel=1e-4, abs=1e-6), key
    ones = _weights(student, loss)
    for k, v in two["weights"].items():
        assert torch.allclose(torch.tensor(v), torch.tensor(ones[k]), atol=1e-5), k
    # It learned: the loss fell, in both.
    totals = [v for _, v in one.curves["total"]]
    assert totals[-1] < 0.8 * totals[0]


def test_two_workers_resume_exactly_with_their_own_dropout_streams(tmp_path):
    full = _spawn(tmp_path, "full", dropout=0.1)
    resumed = _spawn(tmp_path, "resumed", dropout=0.1)
    assert resumed["curves"] == full["curves"]
    assert resumed["weights"] == full["weights"]
