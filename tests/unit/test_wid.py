"""WID on tiny random BERTs: exact start, exact merge, progressive marks, capped penalty, MLM,
resume, long runs, and one objective for search and distillation."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, BertConfig, BertTokenizerFast

from layersearch.config import Config, ObjectiveConfig, TrainConfig, parse_config
from layersearch.distill import train
from layersearch.features import Requirements, extract
from layersearch.init import InitError
from layersearch.losses import DistillLoss
from layersearch.mapping import Mapping
from layersearch.student import finish_student, make_student
from layersearch.wid import (
    WIDLoss,
    build_compactor_model,
    group_norms,
    is_compactor_model,
    is_marking,
    kept_indices,
    marks_fraction,
    merge,
    penalty_at,
    penalty_norm,
    prox_step,
    update_marks,
)

TEACHER = dict(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=32)
DATA = torch.randint(1, 60, (24, 12), generator=torch.Generator().manual_seed(1))
OBJ = ObjectiveConfig(terms={"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0})
# (hidden, heads, ffn): dims inside every head; whole heads; both at once.
TARGETS = [(16, 4, 32), (16, 2, 48), (8, 2, 16)]


def teacher(mlm: bool = False, vocab: int = 60, attn: str = "sdpa"):
    cfg = BertConfig(**{**TEACHER, "vocab_size": vocab})
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = (AutoModelForMaskedLM if mlm else AutoModel).from_config(cfg)
    with torch.no_grad():  # non-trivial LayerNorm affines, so slicing mistakes show
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    model.eval()
    return model.requires_grad_(False)


def target(base, hidden, heads, ffn):
    cfg = copy.deepcopy(base.config)
    cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size = hidden, heads, ffn
    cfg.architectures = None
    return cfg


def batch(seed=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return ids, mask


def config(hidden=16, heads=4, ffn=32, layers=2, **wid) -> Config:
    return parse_config({
        "corpus": {"paths": ["unused"]},
        "objective": OBJ.model_dump(),
        "student": {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
                    "intermediate_size": ffn,
                    "init": {"method": "wid", "layers": "mapping", "wid": wid}},
    })


def compress_randomly(model, seed=0):
    """Stand-in for training: move every weight, then mark, shrink and mark to the target."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    update_marks(model, 0.5)
    prox_step(model, 0.2)
    update_marks(model, 1.0)


def test_compactor_model_starts_exactly_at_the_teacher():
    t = teacher()
    model = build_compactor_model(t, [1, 2, 3, 4], target(t, 16, 4, 32)).eval()
    ids, mask = batch()
    req = Requirements(hidden=range(5), queries=range(1, 5), keys=range(1, 5), values=range(1, 5))
    with torch.no_grad():
        a, b = extract(t, ids, mask, req), extract(model, ids, mask, req)
        pooled = t(input_ids=ids, attention_mask=mask).pooler_output
        assert torch.equal(model(input_ids=ids, attention_mask=mask).pooler_output, pooled)
    for kind in ("hidden", "queries", "keys", "values"):
        for i, x in getattr(a, kind).items():
            assert torch.equal(getattr(b, kind)[i], x), (kind, i)


def test_depth_comes_from_the_mapping():
    t = teacher()
    student, loss, report = make_student(config(), t, Mapping((2, 4), 4), None)
    assert report["teacher_layers"] == [2, 4] and is_compactor_model(student)
    json.dumps(report)
    ids, mask = batch()
    with torch.no_grad():
        hidden = t.embeddings(input_ids=ids)
        for i in (2, 4):
            hidden = t.encoder.layer[i - 1](hidden)
        student.eval()
        got = student(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, hidden, atol=1e-6, rtol=0)
    assert isinstance(loss.distill, DistillLoss) and list(loss.weights) == list(OBJ.terms)


@pytest.mark.parametrize("hidden,heads,ffn", TARGETS)
def test_merged_model_equals_the_pruned_compactor_model(hidden, heads, ffn, tmp_path):
    t = teacher()
    model = build_compactor_model(t, [1, 3, 4], target(t, hidden, heads, ffn))
    compress_randomly(model)
    small = merge(model)
    model.eval()
    keep = kept_indices(model)
    ids, mask = batch()
    with torch.no_grad():
        big = model(input_ids=ids, attention_mask=mask)
        out = small(input_ids=ids, attention_mask=mask)
    h = keep["hidden"]
    pruned = torch.ones(32, dtype=torch.bool)
    pruned[h] = False
    assert not big.last_hidden_state[..., pruned].any()  # removed channels are exactly zero
    torch.testing.assert_close(out.last_hidden_state, big.last_hidden_state[..., h], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooler_output, big.pooler_output[..., h], atol=1e-5, rtol=0)

    c = small.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        3, hidden, heads, ffn)
    layer = small.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (hidden, hidden)
    assert layer.intermediate.dense.weight.shape == (ffn, hidden)
    assert small.embeddings.word_embeddings.weight.shape == (60, hidden)
    small.save_pretrained(tmp_path / "student")
    loaded = AutoModel.from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        again = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(again, out.last_hidden_state, atol=1e-6, rtol=0)


def test_marks_grow_to_the_target_and_the_penalty_grows():
    t = teacher()
    cfg = config(hidden=16, heads=2, ffn=32, mask_every=3, compress_until=0.5, penalty=0.2,
                 penalty_max=1.6)
    student, loss, _ = make_student(cfg, t, Mapping((2, 4), 4), None)
    seen = []

    def record(step, sums):
        marks = student.encoder.layer[0].wid_marks
        seen.append((step, int(student.wid_residual.marked.sum()), int(marks.heads.sum()),
                     int(marks.ffn.sum()), float(loss.penalty_weight)))

    result = train(student, t, loss, DATA, TrainConfig(max_steps=12, batch_size=4, learning_rate=1e-3),
                   on_step=record)
    residual = [s[1] for s in seen]
    assert residual == sorted(residual) and residual[1] == 0 and 0 < residual[2] < 16
    assert seen[5][1:4] == (16, 2, 32)  # compress_until 0.5 of 12 steps: the target at step 6
    assert seen[-1][1:4] == (16, 2, 32)
    weights = [s[4] for s in seen]
    # Half the marks at step 3: half way from 0.2 to 1.6 geometrically; the cap from step 6 on.
    half = (0.2 * 1.6) ** 0.5
    assert weights[:2] == [0, 0] and weights[2:] == pytest.approx([half] * 3 + [1.6] * 7)
    pen = dict(result.curves["wid_penalty"])
    assert pen[1] == 0 and pen[3] > 0
    assert set(result.curves) == {"embedding_mse", "hidden_mse", "attention_mse", "total", "lr",
                                  "wid_penalty"}
    # The penalty is logged apart from the total (the prox step, not the gradient, minimises it).
    totals = result.curves["total"]
    parts = [result.curves[k] for k in ("embedding_mse", "hidden_mse", "attention_mse")]
    for (_, total), *terms in zip(totals, *parts, strict=True):
        assert total == pytest.approx(sum(v for _, v in terms), rel=1e-5)
    # From step 6 marked groups lose 1.6 of norm a step (they start near sqrt(2)).
    assert float(penalty_norm(student)) < 1e-6
    norms = group_norms(student.encoder.layer[1])
    assert norms["ffn"][student.encoder.layer[1].wid_marks.ffn].max() < 1e-6
    small = finish_student(student)
    assert small.config.hidden_size == 16 and not is_compactor_model(small)


def test_resume_replays_a_wid_run(tmp_path):
    def run(**kw):
        cfg = config(mask_every=2, penalty=0.05)
        student, loss, _ = make_student(cfg, teacher(), Mapping((2, 4), 4), None)
        tcfg = TrainConfig(max_steps=6, batch_size=4, learning_rate=1e-3, checkpoint_every=2)
        return student, train(student, teacher(), loss, DATA, tcfg, **kw)

    full_student, full = run()
    run(checkpoint_dir=tmp_path, stop_after=3)
    student, resumed = run(checkpoint_dir=tmp_path, resume=True)
    assert resumed.curves == full.curves
    for (k, a), b in zip(full_student.state_dict().items(), student.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def _tokenizer():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(35))]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})


def test_an_mlm_teacher_trains_with_the_mlm_objective(tmp_path):
    tok = _tokenizer()
    t = teacher(mlm=True, vocab=len(tok))
    cfg = config(hidden=16, heads=2, ffn=32, mask_every=2, penalty=0.05, objective="mlm")
    student, loss, report = make_student(cfg, t, Mapping((2, 4), 4), None, tokenizer=tok)
    assert report["objective"] == ["mlm"] and loss.student_requirements() == Requirements()
    data = torch.randint(5, len(tok), (16, 12), generator=torch.Generator().manual_seed(2))
    data[:, 0] = tok.cls_token_id
    result = train(student, t, loss, data, TrainConfig(max_steps=6, batch_size=4, learning_rate=1e-3))
    assert set(result.curves) == {"mlm", "wid_penalty", "total", "lr"}
    assert all(v > 0 for _, v in result.curves["mlm"])
    assert result.curves["mlm"] == result.curves["total"]
    small = merge(student)
    assert type(small).__name__ == "BertForMaskedLM" and small.config.hidden_size == 16
    student.eval()
    ids, mask = data[:3], torch.ones(3, 12, dtype=torch.long)
    mask[0, 7:] = 0
    with torch.no_grad():
        want = student(input_ids=ids, attention_mask=mask).logits
        got = small(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    small.save_pretrained(tmp_path / "mlm")
    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm").config.hidden_size == 16


def test_wider_heads_than_the_teacher_are_refused():
    t = teacher()
    with pytest.raises(InitError, match="head size 16/1 = 16 exceeds the teacher's 8"):
        make_student(config(hidden=16, heads=1), t, Mapping((2, 4), 4), None)


def test_finish_student_leaves_other_students_alone():
    t = teacher()
    cfg = config().model_copy(deep=True)
    cfg.student.init.method = "etd-rand"
    cfg.student.num_attention_heads = 2
    cfg.objective.terms = {"hidden_mse": 1.0}
    student, _, _ = make_student(cfg, t, Mapping((2, 4), 4), None)
    assert finish_student(student) is student


def test_wid_config_is_validated():
    wid = config().student.init.wid
    assert (wid.mask_every, wid.penalty_max, wid.objective) == (10, 1.0, "distill")
    with pytest.raises(Exception, match="student.init.wid.mask_evry: unknown key"):
        config(mask_evry=5)
    with pytest.raises(Exception, match="student.init.wid: penalty_growth was removed.*penalty_max"):
        config(penalty_growth=1.5)
    with pytest.raises(Exception, match=r"student.init.wid.penalty_max: 0.01 is below penalty \(0.1\)"):
        config(penalty=0.1, penalty_max=0.01)
    assert config(penalty=0.1, penalty_max=0.1).student.init.wid.penalty_max == 0.1
    with pytest.raises(Exception, match="student.init.wid.objective"):
        config(objective="kd")


def test_wid_loss_does_not_own_the_students_parameters():
    t = teacher()
    student, loss, _ = make_student(config(), t, Mapping((2, 4), 4), None)
    assert isinstance(loss, WIDLoss)
    assert not list(loss.parameters())
    assert set(loss.state_dict()) == {"penalty_weight"}


def applied_penalties(wid, steps):
    """The lambda ``WIDLoss.after_step`` applies after each step, with the marks fraction."""
    lam, fraction, out = 0.0, 0.0, []
    for step in range(1, steps + 1):
        if is_marking(wid, step, steps):
            fraction = marks_fraction(wid, step, steps)
            lam = penalty_at(wid, fraction)
        out.append((step, fraction, lam))
    return out


@pytest.mark.parametrize("mask_every,compress_until", [(10, 0.7), (7, 0.33)])
def test_the_penalty_over_100k_steps_is_finite_monotone_and_capped(mask_every, compress_until):
    wid = config(mask_every=mask_every, compress_until=compress_until).student.init.wid
    steps = 100_000
    seen = applied_penalties(wid, steps)
    lams = torch.tensor([lam for _, _, lam in seen], dtype=torch.float32)  # the buffer's dtype
    assert torch.isfinite(lams).all()
    assert (lams[1:] >= lams[:-1]).all() and lams.max() == wid.penalty_max
    assert lams[lams > 0].min() >= wid.penalty
    # The cap arrives with the full marks, at compress_until and not a marking later.
    first_full = next(step for step, fraction, _ in seen if fraction == 1)
    assert first_full == math.ceil(compress_until * steps)
    assert all(lam == wid.penalty_max for step, _, lam in seen if step >= first_full)
    assert all(lam < wid.penalty_max for step, _, lam in seen if step < first_full)


@pytest.mark.slow  # about 80 s on two shared cores
def test_a_3000_step_wid_run_ends_finite_at_the_students_shape():
    # The uncapped schedule (x1.5 every 10 steps) overflowed float32 at step 2,370.
    t = teacher()
    cfg = config(hidden=16, heads=2, ffn=32)  # default schedule: mask_every 10, cap 1.0
    student, loss, _ = make_student(cfg, t, Mapping((2, 4), 4), None)
    data = torch.randint(1, 60, (64, 16), generator=torch.Generator().manual_seed(3))
    result = train(student, t, loss, data, TrainConfig(max_steps=3000, batch_size=2, learning_rate=1e-3,
                                                       log_every=100))
    assert result.curves["total"][-1][0] == 3000
    for name, curve in result.curves.items():
        assert all(math.isfinite(v) for _, v in curve), name
    assert math.isfinite(result.final_loss)
    assert float(loss.penalty_weight) == cfg.student.init.wid.penalty_max
    small = finish_student(student)
    c = small.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 16, 2, 32)
    with torch.no_grad():
        out = small.eval()(input_ids=data[:2]).last_hidden_state
    assert out.shape == (2, 16, 16) and torch.isfinite(out).all()


def _teacher_dir(tmp_path, mlm: bool):
    """A tiny random teacher (with or without its MLM head) and tokenizer, saved as a model dir."""
    tok = _tokenizer()
    path = tmp_path / ("mlm-teacher" if mlm else "teacher")
    teacher(mlm=mlm, vocab=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _search_config(tmp_path, teacher_path, objective, glue):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(f"w{(i * j) % 35}" for j in range(24)) for i in range(40)))
    return parse_config({
        "teacher": {"model": str(teacher_path)},
        "corpus": {"paths": [str(corpus)], "seq_length": 16, "cache_dir": str(tmp_path / "cache")},
        "objective": OBJ.model_dump(),
        "student": {"num_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
                    "init": {"method": "wid", "wid": {"objective": objective}}},
        "proxy": {"slice_blocks": 8},
        "tasks": {"source": str(glue), "names": ["rte"],
                  "finetune": {"train_examples": 8, "dev_examples": 8}},
    })


@pytest.mark.parametrize("objective,terms", [("distill", list(OBJ.terms)), ("mlm", ["mlm"])])
def test_search_and_distillation_train_wid_on_the_same_objective(objective, terms, tmp_path,
                                                                  shared_data):
    from layersearch.fitness.evaluator import Evaluator
    from layersearch.models import load_teacher_for, load_tokenizer

    cfg = _search_config(tmp_path, _teacher_dir(tmp_path, mlm=True), objective, shared_data / "glue")
    mapping = Mapping((2, 4), 4)
    # The proxy evaluation, as the evaluator builds it ...
    evaluator = Evaluator(cfg)
    data = evaluator.slice(0)
    _, proxy_loss, _ = make_student(evaluator.slice_config(0), evaluator.teacher, mapping, data,
                                    evaluator.pad)
    # ... and the final distillation, with the loader cli/distill.py calls.
    final_teacher = load_teacher_for(cfg)
    tokenizer = load_tokenizer(cfg.teacher.model)
    _, final_loss, report = make_student(cfg, final_teacher, mapping, data, evaluator.pad, tokenizer)
    assert list(proxy_loss.weights) == list(final_loss.weights) == report["objective"] == terms
    assert type(evaluator.teacher) is type(final_teacher)
    assert (final_teacher.get_output_embeddings() is not None) == (objective == "mlm")


def test_the_mlm_objective_needs_a_teacher_with_an_mlm_head(tmp_path):
    from layersearch.models import ModelError, load_teacher_for

    cfg = config(objective="mlm").model_copy(deep=True)
    cfg.teacher.model = str(_teacher_dir(tmp_path, mlm=False))
    with pytest.raises(ModelError, match="student.init.wid.objective: 'mlm' needs a teacher with a "
                                         "masked-LM head"):
        load_teacher_for(cfg)
    with pytest.raises(InitError, match="student.init.wid.objective: 'mlm' needs the teacher's "
                                        "masked-LM head"):
        make_student(cfg, teacher(), Mapping((2, 4), 4), None)


def test_an_mlm_teacher_trains_along_the_mapping_by_default():
    student, loss, report = make_student(config(), teacher(mlm=True), Mapping((2, 4), 4), None)
    assert isinstance(loss.distill, DistillLoss) and report["objective"] == list(OBJ.terms)
    assert loss.collator is None and loss.extra_terms(student, *batch()) == {}
