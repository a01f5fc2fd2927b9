"""features.extract on tiny random BERTs: what it catches, and that it cleans up."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from layersearch.features import Requirements, encoder_layers, extract

LAYERS = 4


def tiny_config(attn: str = "sdpa") -> BertConfig:
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    # transformers 5 takes the attention kernel of a model built from a config from here.
    config._attn_implementation = attn
    return config


def tiny_model(attn: str = "sdpa", seed: int = 0, mlm: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = BertForMaskedLM if mlm else BertModel
    return cls(tiny_config(attn)).eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    return ids, mask


def qkv_hook_counts(model: torch.nn.Module) -> list[int]:
    return [
        len(getattr(layer.attention.self, name)._forward_hooks)
        for layer in encoder_layers(model)
        for name in ("query", "key", "value")
    ]


def everything() -> Requirements:
    every = frozenset(range(1, LAYERS + 1))
    return Requirements(
        hidden=frozenset(range(LAYERS + 1)), queries=every, keys=every, values=every
    )


def test_extract_returns_only_what_was_requested(batch):
    model = tiny_model()
    ids, mask = batch
    req = Requirements(hidden={0, 2}, queries={1}, keys={1, 3}, values={4})
    with torch.no_grad():
        f = extract(model, ids, mask, req)
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert set(f.hidden) == {0, 2}
    assert set(f.queries) == {1} and set(f.keys) == {1, 3} and set(f.values) == {4}
    assert f.logits is None and f.attention_mask is mask
    assert f.hidden[2].shape == (2, 7, 32) and f.values[4].shape == (2, 7, 32)
    torch.testing.assert_close(f.hidden[0], ref.hidden_states[0])
    torch.testing.assert_close(f.hidden[2], ref.hidden_states[2])
    # Layer i's projections read layer i-1's output: an independent check of what the hooks caught.
    self1 = model.encoder.layer[0].attention.self
    with torch.no_grad():
        torch.testing.assert_close(f.queries[1], self1.query(ref.hidden_states[0]))
        torch.testing.assert_close(f.keys[1], self1.key(ref.hidden_states[0]))
        self3 = model.encoder.layer[2].attention.self
        torch.testing.assert_close(f.keys[3], self3.key(ref.hidden_states[2]))


def test_hooks_are_removed_after_extract_and_after_an_exception(batch):
    model = tiny_model()
    ids, mask = batch
    before = qkv_hook_counts(model)
    with torch.no_grad():
        extract(model, ids, mask, everything())
    assert qkv_hook_counts(model) == before
    bad_ids = ids.clone()
    bad_ids[0, 0] = 10_000  # outside the vocabulary: the forward pass raises mid-way
    with pytest.raises(IndexError):
        extract(model, bad_ids, mask, everything())
    assert qkv_hook_counts(model) == before


def test_sdpa_and_eager_models_give_the_same_features(batch):
    sdpa, eager = tiny_model("sdpa"), tiny_model("eager")
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    assert eager.config._attn_implementation == "eager"
    ids, mask = batch
    with torch.no_grad():
        a = extract(sdpa, ids, mask, everything())
        b = extract(eager, ids, mask, everything())
    for name in ("hidden", "queries", "keys", "values"):
        da, db = getattr(a, name), getattr(b, name)
        assert da.keys() == db.keys() and da
        for i in da:
            torch.testing.assert_close(da[i], db[i], atol=1e-5, rtol=0)


def test_masked_lm_gives_logits_only_when_asked(batch):
    model = tiny_model(mlm=True)
    ids, mask = batch
    with torch.no_grad():
        f = extract(model, ids, mask, Requirements(hidden={LAYERS}, logits=True))
        g = extract(model, ids, mask, Requirements(hidden={LAYERS}))
        ref = model(input_ids=ids, attention_mask=mask)
    assert f.logits is not None and f.logits.shape == (2, 7, 100)
    torch.testing.assert_close(f.logits, ref.logits)
    assert g.logits is None
    torch.testing.assert_close(f.hidden[LAYERS], g.hidden[LAYERS])


def test_base_model_asked_for_logits_gives_none(batch):
    ids, mask = batch
    with torch.no_grad():
        f = extract(tiny_model(), ids, mask, Requirements(logits=True))
    assert f.logits is None


def test_student_features_carry_gradients(batch):
    model = tiny_model()
    ids, mask = batch
    f = extract(model, ids, mask, Requirements(hidden={2}, queries={2}))
    (f.hidden[2].sum() + f.queries[2].sum()).backward()
    assert model.encoder.layer[1].attention.self.query.weight.grad is not None


def test_layers_outside_the_model_are_rejected(batch):
    ids, mask = batch
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\[5\]"):
        extract(model, ids, mask, Requirements(queries={5}))
    with pytest.raises(ValueError, match=r"\[5\]"):
        extract(model, ids, mask, Requirements(hidden={5}))
    assert qkv_hook_counts(model) == [0] * (3 * LAYERS)


def test_requirements_merge_is_a_union():
    a = Requirements(hidden={0, 2}, queries={2}, keys={2})
    b = Requirements(hidden={4}, values={3}, logits=True)
    m = a.merge(b)
    assert m == Requirements(hidden={0, 2, 4}, queries={2}, keys={2}, values={3}, logits=True)
    assert a | b == m and hash(m) == hash(a | b)
    assert m.layers() == {0, 2, 3, 4}
    assert a.merge() == a
