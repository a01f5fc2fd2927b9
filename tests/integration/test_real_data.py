"""The real shared GLUE files, corpus slices and the offline teacher."""

from __future__ import annotations

import pytest
import torch

from layersearch.config import parse_config
from layersearch.data.slices import get_slice
from layersearch.data.tasks import TASKS, load_task, score
from layersearch.models import load_teacher, load_tokenizer

pytestmark = pytest.mark.slow

SPLITS = {"sst2": (67349, 872), "mrpc": (3668, 408), "rte": (2490, 277), "cola": (8551, 1043)}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_glue_split_sizes_and_labels(name, shared_data):
    ds = load_task(name, str(shared_data / "glue"))
    assert (len(ds["train"]), len(ds["dev"])) == SPLITS[name]
    spec = TASKS[name]
    for split in ("train", "dev"):
        assert set(ds[split]["label"]) == {0, 1}
        assert ds[split].features["label"].names == list(spec.label_names)
        for field in spec.text_fields:
            texts = ds[split][field]
            assert all(isinstance(t, str) and t for t in texts[:200]), field


def test_glue_quirks(shared_data):
    mrpc = load_task("mrpc", str(shared_data / "glue"))["train"]
    # The BOM-prefixed header still yields the label column; bare quotes survive.
    assert mrpc[0]["label"] == 1 and mrpc[0]["sentence1"].startswith("Amrozi")
    assert '"the witness"' in mrpc[0]["sentence1"]
    rte = load_task("rte", str(shared_data / "glue"))["train"]
    assert rte[0]["label"] == TASKS["rte"].label_names.index("not_entailment")
    cola = load_task("cola", str(shared_data / "glue"))["train"]
    assert cola[0]["sentence"].startswith("Our friends")


def test_glue_metrics():
    assert score("sst2", [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 0.75}
    mrpc = score("mrpc", [1, 1, 0, 0], [1, 0, 0, 1])
    assert list(mrpc) == ["f1", "accuracy"] and mrpc["f1"] == pytest.approx(0.5)
    assert score("cola", [1, 0, 1, 0], [1, 0, 1, 0])["matthews"] == pytest.approx(1.0)
    assert score("cola", [1, 1, 1, 1], [1, 0, 1, 0])["matthews"] == 0.0


def test_slices_deterministic_per_seed(quickstart_raw):
    cfg = parse_config(quickstart_raw)
    tok = load_tokenizer(cfg.teacher.model)
    a = get_slice(cfg.corpus, tok, 64, seed=0)
    b = get_slice(cfg.corpus, tok, 64, seed=0)
    c = get_slice(cfg.corpus, tok, 64, seed=1)
    assert not a.cached and b.cached and not c.cached
    assert a.key == b.key != c.key
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.input_ids.shape == (64, cfg.corpus.seq_length)
    assert (a.input_ids[:, 0] == tok.cls_token_id).all()
    # Rebuilt from scratch in another cache, the same key yields the same blocks.
    cfg2 = parse_config({**quickstart_raw, "corpus": {**quickstart_raw["corpus"],
                                                       "cache_dir": quickstart_raw["corpus"]["cache_dir"] + "2"}})
    d = get_slice(cfg2.corpus, tok, 64, seed=0)
    assert not d.cached and d.key == a.key and torch.equal(d.input_ids, a.input_ids)
    text = tok.decode(a.input_ids[0])
    assert "@-@" not in text and " = " not in text[:3]


def test_offline_teacher_exposes_layers_and_maps():
    teacher = load_teacher("offline:minilm-l6")
    tok = load_tokenizer("offline:minilm-l6")
    batch = tok(["The lobster is blue.", "It turns red when cooked, they say."],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        out = teacher(**batch, output_hidden_states=True, output_attentions=True)
    assert teacher.config.num_hidden_layers == 6
    assert len(out.hidden_states) == 7
    assert len(out.attentions) == 6
    assert out.attentions[0].shape[1] == 12
    rows = out.attentions[0].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())
