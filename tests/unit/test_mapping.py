"""Mappings: validation, heuristics, canonical keys and the JSON file format."""

from __future__ import annotations

import json

import pytest

from layersearch.mapping import (
    HEURISTICS,
    Mapping,
    MappingError,
    heuristic,
    load_mapping,
    parse_genes,
    resolve_mapping,
    save_mapping,
)


@pytest.mark.parametrize("name,m,n,genes", [
    ("uniform", 4, 12, (3, 6, 9, 12)),  # TinyBERT-4 on BERT-base
    ("uniform", 3, 6, (2, 4, 6)),
    ("uniform", 4, 6, (1, 3, 4, 6)),
    ("last", 3, 6, (0, 0, 6)),
    ("lower", 3, 6, (1, 2, 3)),
    ("upper", 3, 6, (4, 5, 6)),
    ("upper", 6, 6, (1, 2, 3, 4, 5, 6)),
])
def test_heuristics(name, m, n, genes):
    assert heuristic(name, m, n).genes == genes


@pytest.mark.parametrize("genes,n,msg", [
    ((1, 7), 6, "gene 2 is 7, outside 0..6"),
    ((-1, 2), 6, "gene 1 is -1"),
    ((0, 0), 6, "every gene is 0"),
    ((), 6, "no genes"),
    ((1.5, 2), 6, "not an integer"),
])
def test_invalid_genes(genes, n, msg):
    with pytest.raises(MappingError, match=msg):
        Mapping(genes, n)


def test_pairs_key_and_layers():
    m = Mapping((0, 3, 3, 6), 6)
    assert m.pairs() == [(2, 3), (3, 3), (4, 6)]
    assert m.teacher_layers() == [3, 6]
    assert m.key == "6:0-3-3-6"
    assert Mapping([0, 3, 3, 6], 6) == m and hash(Mapping((0, 3, 3, 6), 6)) == hash(m)
    assert Mapping((0, 3, 3, 6), 12).key != m.key


def test_json_round_trip_and_format(tmp_path):
    m = Mapping((2, 4, 6), 6)
    path = save_mapping(m, tmp_path / "sub" / "best.json", "offline:minilm-l6", ["hidden_mse"], fitness=0.7)
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["teacher"] == "offline:minilm-l6"
    assert data["num_student_layers"] == 3 and data["objective"] == ["hidden_mse"] and data["fitness"] == 0.7
    loaded, record = load_mapping(path)
    assert loaded == m and record["genes"] == [2, 4, 6]


@pytest.mark.parametrize("content,msg", [
    ("{not json", "not valid JSON"),
    ('{"genes": [1]}', "lacks"),
    ('{"format_version": 99, "genes": [1], "num_teacher_layers": 6}', "format_version 99"),
    ('{"format_version": 1, "genes": "1,2", "num_teacher_layers": 6}', "must be a list"),
])
def test_bad_mapping_files(tmp_path, content, msg):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(MappingError, match=msg):
        load_mapping(path)


def test_resolve_every_form(tmp_path):
    assert resolve_mapping("upper", 3, 6).genes == (4, 5, 6)
    assert resolve_mapping("2,4,6", 3, 6).genes == (2, 4, 6)
    assert resolve_mapping("[1, 3, 6]", 3, 6).genes == (1, 3, 6)
    save_mapping(Mapping((1, 1, 6), 6), tmp_path / "m.json", "t")
    assert resolve_mapping(str(tmp_path / "m.json"), 3, 6).genes == (1, 1, 6)
    with pytest.raises(MappingError, match="2 genes for a 3-layer student"):
        resolve_mapping("2,6", 3, 6)
    with pytest.raises(MappingError, match="made for a 6-layer teacher"):
        resolve_mapping(str(tmp_path / "m.json"), 3, 12)
    with pytest.raises(MappingError, match="cannot read"):
        parse_genes("two,four")
    assert set(HEURISTICS) == {"uniform", "last", "lower", "upper"}
