"""Corpus text cleaning and block construction (no teacher needed)."""

from __future__ import annotations

import pytest
from datasets import Dataset
from transformers import BertTokenizerFast

from layersearch.data.corpus import clean_wikitext, tokenize_blocks


def test_wikitext_headings_and_markers():
    assert clean_wikitext(" = Homarus gammarus = \n") is None
    assert clean_wikitext(" = = Description = = \n") is None
    assert clean_wikitext(" \n") is None
    assert clean_wikitext(" a 3 @-@ year @,@ 000 @.@ 5 test \n") == "a 3-year,000.5 test"
    # Prose with an '=' inside is kept.
    assert clean_wikitext(" x = y holds \n") == "x = y holds"


def _tokenizer(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(20)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    return BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))


def test_blocks_are_framed_and_fixed_length(tmp_path):
    tok = _tokenizer(tmp_path)
    text = Dataset.from_dict({"text": [" ".join(f"w{i % 20}" for i in range(n)) for n in (7, 11, 5)]})
    blocks = tokenize_blocks(text, tok, seq_length=6)
    ids = blocks["input_ids"]
    assert all(len(b) == 6 for b in ids)
    assert all(b[0] == tok.cls_token_id and b[-1] == tok.sep_token_id for b in ids)
    # 23 body tokens in blocks of 4: five whole blocks, the tail dropped; order kept.
    assert len(ids) == 5
    flat = [t for b in ids for t in b[1:-1]]
    expected = tok(list(text["text"]), add_special_tokens=False)["input_ids"]
    assert flat == [t for seq in expected for t in seq][:20]


def test_num_proc_is_validated_and_defaults_to_the_cpus(monkeypatch):
    from pydantic import ValidationError

    from layersearch.config import CorpusConfig
    from layersearch.data.corpus import num_proc

    with pytest.raises(ValidationError, match="num_proc"):
        CorpusConfig(paths=["x"], num_proc=0)
    assert num_proc(CorpusConfig(paths=["x"], num_proc=3)) == 3
    assert num_proc(CorpusConfig(paths=["x"], num_proc=1)) is None  # in-process, no fork
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert num_proc(CorpusConfig(paths=["x"])) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert num_proc(CorpusConfig(paths=["x"])) == 2


def test_num_proc_stays_out_of_the_proxy_spec(quickstart_raw):
    from layersearch.config import Config
    from layersearch.fitness.spec import spec_key

    one = Config.model_validate({**quickstart_raw, "corpus": {**quickstart_raw["corpus"], "num_proc": 1}})
    two = Config.model_validate({**quickstart_raw, "corpus": {**quickstart_raw["corpus"], "num_proc": 2}})
    assert spec_key(one) == spec_key(two)


def test_a_file_that_is_not_utf8_is_named_in_one_line(tmp_path):
    from layersearch.config import CorpusConfig
    from layersearch.data.corpus import CorpusError, load_text

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("plain text\n")
    (tmp_path / "text" / "b.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    cfg = CorpusConfig(paths=[str(tmp_path / "text")], cache_dir=str(tmp_path / "cache"), num_proc=1)
    with pytest.raises(CorpusError, match=r"b\.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"):
        load_text(cfg)
