"""docs/api.md's example, run as written (on a private copy of the quickstart config): the Python
API compares two mappings, distils a student with a model card, and the student fine-tunes."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, quickstart_dict

pytestmark = pytest.mark.slow


def test_the_api_example_runs(shared_data, tmp_path, monkeypatch, caplog):
    config = tmp_path / "quickstart.yaml"
    config.write_text(yaml.safe_dump(quickstart_dict(shared_data, tmp_path) | {}))
    raw = yaml.safe_load(config.read_text())
    raw["tasks"]["readout"] = "agreement"  # the shipped readout, as the example runs it
    raw["proxy"].pop("evidence", None)
    config.write_text(yaml.safe_dump(raw))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) == 2, "docs/api.md: the example and the fine-tune"
    monkeypatch.chdir(tmp_path)  # the example's relative outputs land here
    code = "\n".join(blocks).replace("configs/quickstart.yaml", str(config)).replace(
        "../shared/data/glue", str(shared_data / "glue"))
    caplog.set_level(logging.INFO, logger="layersearch")
    scope: dict = {}
    exec(compile(code, "docs/api.md", "exec"), scope)

    verdicts, student = scope["verdicts"], scope["student"]
    assert [c.label for c in verdicts.comparisons] == ["lower"]
    assert verdicts.comparisons[0].verdict in ("better", "worse", "indistinguishable", "equivalent")
    assert "comparison run" not in caplog.text  # the library itself prints nothing; it logs progress
    assert any("uniform" in r.getMessage() for r in caplog.records)
    out = Path(student.student_path)
    assert out.resolve() == (tmp_path / "outputs" / "api" / "student").resolve()
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["library_name"] == "transformers" and "layersearch" in meta["tags"]
    assert "[2, 4, 6]" in card and student.run_id in card
    assert scope["loss"].item() > 0
