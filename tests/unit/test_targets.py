"""Cached teacher targets: the store's one writer, damage and full-disk handling; cached features
equal to live ones bit for bit; the spec key and ``proxy.teacher_cache``."""

from __future__ import annotations

import errno
import multiprocessing
import time

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

from layersearch.data import arrays
from layersearch.data.arrays import ArrayStoreError, open_entry
from layersearch.features import Requirements, extract

ROWS = np.arange(24, dtype=np.float32).reshape(6, 4)


def _build(log):
    def build(writer):
        with open(log, "a") as fh:
            fh.write("built\n")
        time.sleep(0.3)  # long enough for a twin to arrive while the lock is held
        f = writer.add("x", ROWS.shape, torch.float32)
        for r in ROWS:
            f.write(torch.from_numpy(r)[None])
        return {"note": "test"}

    return build


def _open_twin(root, log, out):
    e = open_entry(root, "k", _build(log))
    out.put(np.asarray(e.arrays["x"]).tolist())


def test_two_writers_build_an_entry_once(tmp_path):
    log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_open_twin, args=(tmp_path / "store", log, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1
    assert results[0] == results[1] == ROWS.tolist()
    assert [p.name for p in (tmp_path / "store").iterdir() if not p.name.endswith(".lock")] == ["k"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_damaged_entry_is_rebuilt_never_read(tmp_path, damage, capsys):
    log = tmp_path / "builds.log"
    first = open_entry(tmp_path, "k", _build(log))
    assert first.built and np.array_equal(first.arrays["x"], ROWS)
    data = tmp_path / "k" / "x.npy"
    raw = bytearray(data.read_bytes())
    if damage == "flip":
        raw[-3] ^= 0xFF  # same size: only the checksum can tell
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(bytes(raw[:-8]))
    else:
        (tmp_path / "k" / arrays.MANIFEST).write_text("{not json")
    again = open_entry(tmp_path, "k", _build(log))
    assert again.built and log.read_text().count("built") == 2
    assert np.array_equal(again.arrays["x"], ROWS)
    assert "is damaged" in capsys.readouterr().err
    assert not open_entry(tmp_path, "k", _build(log)).built  # whole again: read, not rebuilt


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fh, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(arrays, "write_bytes", full)
    with pytest.raises(ArrayStoreError) as info:
        open_entry(tmp_path, "k", _build(tmp_path / "log"), what="teacher targets", fix="set proxy.teacher_cache: off")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("disk full writing teacher targets") and "teacher_cache: off" in msg
    assert [p.name for p in tmp_path.iterdir() if p.name != "log"] == [".k.lock"]  # no entry, no temp folder


def _tiny_teacher(family: str = "bert"):
    torch.manual_seed(0)
    shape = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=32)
    if family == "mpnet":  # its scores carry a position bias that extract adds per batch
        cfg = MPNetConfig(**shape)
        cfg._attn_implementation = "eager"
        model = MPNetModel(cfg)
        with torch.no_grad():
            model.encoder.relative_attention_bias.weight.normal_(0, 1)
        return model.eval()
    return BertModel(BertConfig(**shape)).eval()


@pytest.mark.parametrize("precision,family", [("fp32", "bert"), ("bf16", "bert"), ("bf16", "mpnet")])
def test_cached_targets_equal_live_features_bit_for_bit(tmp_path, quickstart_raw, precision, family):
    from layersearch.config import parse_config
    from layersearch.data.targets import search_space_requirements, slice_targets

    teacher = _tiny_teacher(family)
    cfg = parse_config(quickstart_raw)
    ids = torch.randint(1, 50, (40, 16), generator=torch.Generator().manual_seed(1))
    import layersearch.identity as spec

    spec_teacher = spec.teacher_identity
    try:  # the tiny teacher has no files to name: any fixed identity keys it
        spec.teacher_identity = lambda *_: {"tiny": 1}
        cached = slice_targets(cfg, teacher, ids, "cpu", precision)
    finally:
        spec.teacher_identity = spec_teacher
    req = search_space_requirements(cfg, 3)
    assert req.hidden == {0, 1, 2, 3} and req.queries == req.keys == {1, 2, 3} and not req.values
    rows = torch.tensor([33, 2, 17, 5, 39, 0])  # another batch than the build's 32-block passes
    part = Requirements(hidden={0, 2}, queries={3}, keys={3})  # one mapping's subset
    mask = torch.ones(len(rows), 16, dtype=torch.long)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with ctx, torch.no_grad():
        live = extract(teacher, ids[rows], mask, part)
    got = cached.features(rows, part, mask)
    for kind in ("hidden", "queries", "keys"):
        assert getattr(got, kind).keys() == getattr(live, kind).keys()
        for i, t in getattr(live, kind).items():
            assert getattr(got, kind)[i].dtype == t.dtype
            assert torch.equal(getattr(got, kind)[i], t), (kind, i)
    assert (live.score_bias is None) == (family == "bert")
    if live.score_bias is not None:
        assert torch.equal(got.score_bias, live.score_bias)
        assert torch.equal(got.scores(3, 4), live.scores(3, 4))
    with pytest.raises(ValueError, match="lack"):
        cached.features(rows, Requirements(values={1}), mask)


def test_spec_key_per_teacher_cache_setting(quickstart_raw):
    from layersearch.config import parse_config
    from layersearch.fitness.spec import proxy_spec, spec_key

    def key(**proxy):
        raw = {**quickstart_raw, "proxy": {**quickstart_raw["proxy"], **proxy}}
        return spec_key(parse_config(raw), "cpu")

    off, on = key(teacher_cache="off"), key(teacher_cache="on")
    assert off != on
    # auto is on under the budget and off over it, and names the same units as the setting it resolves to
    assert key(teacher_cache="auto") == on
    assert key(teacher_cache="auto", teacher_cache_budget_gb=0.001) == off
    # the budget itself changes no unit; the precision targets were stored at does
    assert key(teacher_cache="on", teacher_cache_budget_gb=1.0) == on
    bf16 = {**quickstart_raw["proxy"]["train"], "precision": "bf16"}
    fp32 = {**quickstart_raw["proxy"]["train"], "precision": "fp32"}
    assert key(teacher_cache="on", train=bf16) != key(teacher_cache="on", train=fp32)
    raw = {**quickstart_raw, "proxy": {**quickstart_raw["proxy"], "teacher_cache": "on", "train": bf16}}
    assert proxy_spec(parse_config(raw), "cpu")["proxy"]["teacher_targets"] == {
        "cached": True, "stored": "as computed at bf16"}
    raw["proxy"]["teacher_cache"] = False  # YAML's bare `off`
    assert "teacher_targets" not in proxy_spec(parse_config(raw), "cpu")["proxy"]
