"""Shared fixtures: where the real data lives, and small configs built from the quickstart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout, as CI lays it out; overridable for other layouts.
SHARED_DATA = Path(os.environ.get("LAYERSEARCH_SHARED_DATA", ROOT.parent / "shared" / "data"))
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; set LAYERSEARCH_SHARED_DATA")
    return SHARED_DATA


def quickstart_dict(data: Path, root: Path) -> dict:
    """The quickstart config as a dict, with absolute data paths and its outputs under ``root``."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["corpus"]["paths"] = [str(data / "corpus" / "wikitext103")]
    raw["corpus"]["cache_dir"] = str(root / "cache")
    raw["tasks"]["source"] = str(data / "glue")
    raw["tracking"]["uri"] = f"sqlite:///{root / 'mlflow.db'}"
    raw["distill"]["output_dir"] = str(root / "student")
    # The mechanics tests' proxy: the fine-tune readout on one slice, raced over fine-tune seeds,
    # cheaper than the shipped agreement readout on 3 slices and what their assertions count;
    # tests of the shipped settings load configs/quickstart.yaml as it is.
    raw["tasks"]["readout"] = "finetune"
    raw["proxy"]["slice_seeds"] = [0]
    raw["search"]["racing"] = {"seeds": [1, 3], "reduction": 2}
    return raw


@pytest.fixture
def quickstart_raw(shared_data, tmp_path) -> dict:
    """The quickstart config as a dict, with absolute data paths and a private cache."""
    return quickstart_dict(shared_data, tmp_path)


@pytest.fixture
def write_config(tmp_path):
    """Write a dict (or raw text) as a YAML config file and return its path."""

    def write(content, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return path

    return write


# tests/ holds helpers (fitness_double) that tests import by module name.
import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
