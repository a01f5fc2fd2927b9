"""Packed training equals one-by-one training, student by student."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from layersearch.config import ObjectiveConfig, TrainConfig
from layersearch.distill import DivergenceError, train
from layersearch.distill.packed import train_packed
from layersearch.losses import DistillLoss
from layersearch.mapping import Mapping
from layersearch.models import build_student

TCFG = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1)
SCFG = BertConfig(**{**TCFG.to_dict(), "num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32})
DATA = torch.randint(1, 60, (24, 12), generator=torch.Generator().manual_seed(1))
CFG = TrainConfig(max_steps=5, batch_size=4, grad_accum_steps=2, learning_rate=1e-3, seed=3)
MAPPINGS = [Mapping((2, 4), 4), Mapping((1, 4), 4), Mapping((0, 3), 4)]
OBJECTIVES = [
    ObjectiveConfig(terms={"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0}),
    ObjectiveConfig(terms={"hidden_mse": 1.0, "value_kl": 1.0}),
    ObjectiveConfig(terms={"attention_kl": 1.0}),
]


def teacher():
    torch.manual_seed(0)
    return build_student(TCFG, attentions=False).eval()


def student(i):
    """Student i and its loss (whose projections are random too), from seed 100 + i."""
    torch.manual_seed(100 + i)
    return build_student(SCFG, attentions=False), DistillLoss(OBJECTIVES[i], MAPPINGS[i], SCFG, TCFG)


def test_packed_equals_one_by_one():
    t = teacher()
    alone = []
    for i in range(3):
        s, loss = student(i)
        alone.append((train(s, t, loss, DATA, CFG), s))
    students, losses = zip(*(student(i) for i in range(3)), strict=True)
    packed = train_packed(list(students), t, list(losses), DATA, CFG)
    for (ref, s_ref), res, s in zip(alone, packed, students, strict=True):
        assert set(res.curves) == set(ref.curves)
        for k in ref.curves:
            assert [st for st, _ in res.curves[k]] == [st for st, _ in ref.curves[k]]
            assert [v for _, v in res.curves[k]] == pytest.approx([v for _, v in ref.curves[k]], abs=1e-6)
        for a, b in zip(s_ref.parameters(), s.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_a_diverging_member_does_not_stop_the_pack():
    t = teacher()
    students, losses = zip(*(student(i) for i in range(2)), strict=True)
    with torch.no_grad():
        students[0].encoder.layer[0].attention.self.query.weight[0, 0] = float("nan")
    first, second = train_packed(list(students), t, list(losses), DATA, CFG)
    assert isinstance(first, DivergenceError)
    assert len(second.curves["total"]) == 5


def test_split_on_oom_halves_down_to_one_and_isolates_other_errors():
    from layersearch.distill.packed import split_on_oom

    sizes = []

    def run(items):  # out of memory above two items; item 5 raises on its own
        sizes.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("out of memory")
        if 5 in items:
            raise ValueError("bad item 5")
        return [i * 10 for i in items]

    out = split_on_oom(list(range(7)), run)
    assert out[:5] == [0, 10, 20, 30, 40] and out[6] == 60
    assert isinstance(out[5], ValueError)  # the failing member fails alone
    assert sizes == [7, 4, 2, 2, 3, 2, 1, 1, 1]
    # A CPU allocator failure counts as out of memory; a plain bug in a one-item pack is its outcome.
    assert split_on_oom([1], lambda items: (_ for _ in ()).throw(RuntimeError("boom")))[0].args == ("boom",)
    from layersearch.distill.packed import is_out_of_memory

    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_on_step_sees_each_student_mid_run_as_a_stopped_run_leaves_it(tmp_path):
    # The ladder saves its half-budget students from on_step: at step k a member must hold what
    # train() alone holds when stopped (preempted) after k steps of the same schedule.
    t = teacher()
    k = 3
    alone = []
    for i in range(2):
        s, loss = student(i)
        train(s, t, loss, DATA, CFG, checkpoint_dir=tmp_path / f"ck{i}", stop_after=k)
        alone.append(s)
    students, losses = zip(*(student(i) for i in range(2)), strict=True)
    seen, snaps = [], {}

    def on_step(step):
        seen.append(step)
        if step == k:
            snaps.update({i: [p.detach().clone() for p in s.parameters()] for i, s in enumerate(students)})

    train_packed(list(students), t, list(losses), DATA, CFG, on_step=on_step)
    assert seen == list(range(1, CFG.max_steps + 1))
    for i, ref in enumerate(alone):
        for a, b in zip(ref.parameters(), snaps[i], strict=True):
            assert torch.allclose(a, b, atol=1e-6)
        # and the pack went on training after the snapshot
        assert not all(torch.equal(a, b) for a, b in zip(students[i].parameters(), snaps[i], strict=True))


def test_a_stopped_pack_resumes_from_its_checkpoints_as_if_never_stopped(tmp_path):
    t = teacher()
    students, losses = zip(*(student(i) for i in range(2)), strict=True)
    train_packed(list(students), t, list(losses), DATA, CFG)

    class Killed(Exception):
        pass

    def kill_at(step):
        if step == 3:  # after checkpoint-2, before the next: step 3's work is lost, as in a crash
            raise Killed

    first, first_losses = zip(*(student(i) for i in range(2)), strict=True)
    with pytest.raises(Killed):
        train_packed(list(first), t, list(first_losses), DATA, CFG, on_step=kill_at,
                     checkpoint_dir=tmp_path, checkpoint_every=2)
    assert sorted(p.name for p in (tmp_path / "member-1").iterdir()) == ["checkpoint-2"]
    again, again_losses = zip(*(student(i) for i in range(2)), strict=True)  # rebuilt as the first time
    seen = []
    out = train_packed(list(again), t, list(again_losses), DATA, CFG, on_step=seen.append,
                       checkpoint_dir=tmp_path, checkpoint_every=2)
    assert seen == [3, 4, 5]  # resumed after step 2
    for ref, s in zip(students, again, strict=True):
        for a, b in zip(ref.parameters(), s.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-6)
    assert [st for st, _ in out[0].curves["total"]] == [st for st, _ in
                                                        train_packed([student(0)[0]], t, [student(0)[1]], DATA,
                                                                     CFG)[0].curves["total"]]
