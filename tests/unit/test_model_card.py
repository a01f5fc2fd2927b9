"""The distilled student's model card: the Hub metadata a user (and the Hub) reads first."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from layersearch.config import load_config
from layersearch.mapping import Mapping
from layersearch.model_card import base_model, write_model_card

ROOT = Path(__file__).resolve().parents[2]


def front_matter(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_card_names_the_teacher_and_the_family(tmp_path):
    cfg = load_config(ROOT / "configs" / "mpnet-base-4l312.yaml")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mpnet"}))
    meta = front_matter(write_model_card(tmp_path, cfg, Mapping((5, 12, 12, 12), 12), "run0"))
    assert meta["base_model"] == "sentence-transformers/all-mpnet-base-v2"
    assert meta["library_name"] == "transformers" and "mpnet" in meta["tags"] and "bert" not in meta["tags"]
    assert base_model("offline:minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model("bert-base-uncased") == "bert-base-uncased"
    assert base_model(str(tmp_path)) is None  # a local directory is no Hub id
