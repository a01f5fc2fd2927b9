"""The trainer on tiny random BERTs: exact resume, NaN detection, damaged checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from layersearch.config import ObjectiveConfig, TrainConfig
from layersearch.distill import (
    CheckpointError,
    DivergenceError,
    latest_checkpoint,
    micro_batch,
    total_steps,
    train,
)
from layersearch.losses import DistillLoss
from layersearch.mapping import Mapping
from layersearch.models import build_student

OBJ = ObjectiveConfig(terms={"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0})


def _pair(seed=0):
    """The same teacher every time (as a pretrained one would be); student weights from seed."""
    torch.manual_seed(0)
    tcfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32)
    teacher = build_student(tcfg, attentions=False).eval()
    torch.manual_seed(seed)
    scfg = BertConfig(**{**tcfg.to_dict(), "num_hidden_layers": 2, "hidden_size": 16,
                         "num_attention_heads": 4, "intermediate_size": 32})
    student = build_student(scfg, attentions=False)
    loss = DistillLoss(OBJ, Mapping((2, 4), 4), scfg, tcfg)
    return student, teacher, loss


DATA = torch.randint(1, 60, (24, 12), generator=torch.Generator().manual_seed(1))
CFG = TrainConfig(max_steps=6, batch_size=4, learning_rate=1e-3, checkpoint_every=2, seed=3)


def test_loss_goes_down_and_curves_have_every_term():
    student, teacher, loss = _pair()
    result = train(student, teacher, loss, DATA, CFG.model_copy(update={"max_steps": 30}))
    assert set(result.curves) == {"embedding_mse", "hidden_mse", "attention_mse", "total", "lr"}
    totals = [v for _, v in result.curves["total"]]
    assert len(totals) == 30 and totals[-1] < 0.7 * totals[0]
    assert result.tokens == 30 * 4 * 12


def test_resume_replays_the_uninterrupted_curve(tmp_path):
    student, teacher, loss = _pair()
    full = train(student, teacher, loss, DATA, CFG, checkpoint_dir=tmp_path / "a")

    student, teacher, loss = _pair()
    part = train(student, teacher, loss, DATA, CFG, checkpoint_dir=tmp_path / "b", stop_after=4)
    assert part.steps == 4 and latest_checkpoint(tmp_path / "b").name == "checkpoint-4"
    student, teacher, loss = _pair(seed=99)  # fresh objects: everything must come from disk
    resumed = train(student, teacher, loss, DATA, CFG, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.curves == full.curves
    s_full, t_full, l_full = _pair()
    train(s_full, t_full, l_full, DATA, CFG)
    for (k, a), b in zip(s_full.state_dict().items(), student.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    student, teacher, loss = _pair()
    result = train(student, teacher, loss, DATA, CFG, checkpoint_dir=tmp_path, resume=True)
    assert result.steps == 6


def test_nan_loss_stops_with_a_clear_error():
    student, teacher, loss = _pair()
    with torch.no_grad():
        student.encoder.layer[0].attention.self.query.weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match=r"loss became nan at step 1 \(objective"):
        train(student, teacher, loss, DATA, CFG)


@pytest.mark.parametrize("damage", ["truncate", "missing", "garbage_state"])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    student, teacher, loss = _pair()
    train(student, teacher, loss, DATA, CFG, checkpoint_dir=tmp_path, stop_after=2)
    ckpt = latest_checkpoint(tmp_path)
    if damage == "truncate":
        blob = (ckpt / "student.safetensors").read_bytes()
        (ckpt / "student.safetensors").write_bytes(blob[: len(blob) // 2])
    elif damage == "missing":
        (ckpt / "optim.pt").unlink()
    else:
        (ckpt / "optim.pt").write_bytes(b"not a torch file")
    student, teacher, loss = _pair()
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        train(student, teacher, loss, DATA, CFG, checkpoint_dir=tmp_path, resume=True)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
    """A machine crash that truncates the newest checkpoint costs its steps, not the run."""
    s_full, t_full, l_full = _pair()
    full = train(s_full, t_full, l_full, DATA, CFG)
    student, teacher, loss = _pair()
    train(student, teacher, loss, DATA, CFG, checkpoint_dir=tmp_path, stop_after=4)
    assert [p.name for p in sorted(tmp_path.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    blob = (tmp_path / "checkpoint-4" / "student.safetensors").read_bytes()
    (tmp_path / "checkpoint-4" / "student.safetensors").write_bytes(blob[: len(blob) // 3])
    capfd.readouterr()
    student, teacher, loss = _pair(seed=99)  # fresh objects: everything from checkpoint-2
    resumed = train(student, teacher, loss, DATA, CFG, checkpoint_dir=tmp_path, resume=True)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint-4 is corrupt or incomplete" in err[0] and "checkpoint-2" in err[0]
    assert resumed.curves == full.curves
    for (k, a), b in zip(s_full.state_dict().items(), student.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoints_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    import layersearch.distill.checkpoint as ckpt

    synced, renamed = [], []
    real_fsync, real_rename = ckpt.fsync_path, type(tmp_path).rename
    monkeypatch.setattr(ckpt, "fsync_path", lambda p: (synced.append(p), real_fsync(p))[1])
    monkeypatch.setattr(type(tmp_path), "rename",
                        lambda self, target: (renamed.append(len(synced)), real_rename(self, target))[1])
    student, teacher, loss = _pair()
    train(student, teacher, loss, DATA, CFG.model_copy(update={"max_steps": 2}), checkpoint_dir=tmp_path)
    names = {p.name for p in synced}
    assert {"student.safetensors", "loss.safetensors", "optim.pt", "trainer_state.json", "rng-0.pt"} <= names
    assert renamed and renamed[0] >= 6  # five files and the staging folder, all before the rename
    assert synced[-1] == tmp_path  # and the parent folder after it


def test_budget_and_data_order():
    cfg = TrainConfig(max_steps=None, max_tokens=1000, batch_size=4, grad_accum_steps=2)
    assert total_steps(cfg, 12) == 11  # ceil(1000 / 96)
    assert total_steps(cfg.model_copy(update={"max_steps": 5}), 12) == 5
    a = micro_batch(DATA, 7, 4, seed=0)
    assert torch.equal(a, micro_batch(DATA, 7, 4, seed=0))
    assert not torch.equal(a, micro_batch(DATA, 7, 4, seed=1))
    # One epoch visits every block once.
    epoch = torch.cat([micro_batch(DATA, i, 4, seed=0) for i in range(6)])
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, DATA.tolist()))
