"""The quickstart on a clone with no ../shared/data: the Makefile reads WikiText and GLUE from the
Hugging Face Hub through ``datasets``. With no network here, the Hub's two datasets are copied to
local folders in the Hub's own layout (parquet per config and split, configs in README.md), and
the same ``load_dataset`` calls read them."""

from __future__ import annotations

import shlex
import subprocess

import pytest
import yaml
from conftest import QUICKSTART, ROOT

pytestmark = pytest.mark.slow


def _hub_repo(root, configs: dict[str, dict]) -> None:
    """A dataset repo as the Hub lays one out: <config>/<split>-00000-of-00001.parquet."""
    entries = []
    for config, splits in configs.items():
        for split, ds in splits.items():
            (root / config).mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
        entries.append({"config_name": config, "data_files": [
            {"split": split, "path": f"{config}/{split}-*"} for split in splits]})
    (root / "README.md").write_text(f"---\n{yaml.safe_dump({'configs': entries})}---\n")


def test_without_shared_data_the_quickstart_reads_the_hub(shared_data, tmp_path, monkeypatch):
    from datasets import Dataset

    from layersearch.checks import HUB_CORPUS_SETS, check
    from layersearch.config import load_config
    from layersearch.data import tasks
    from layersearch.data.corpus import load_text

    # What `make quickstart` runs where ../shared/data is absent, and that it runs nothing else there.
    dry = subprocess.run(["make", "-n", "quickstart", f"SHARED_DATA={tmp_path / 'absent'}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    prepare = shlex.split(next(x for x in dry.splitlines() if "layersearch data prepare" in x))
    overrides = [prepare[i + 1] for i, a in enumerate(prepare) if a == "--set"]
    assert " ".join(f"--set {shlex.quote(o)}" for o in overrides).startswith(HUB_CORPUS_SETS)
    assert "tasks.source=hub" in overrides
    present = subprocess.run(["make", "-n", "quickstart", f"SHARED_DATA={shared_data}"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert "--set" not in next(x for x in present.splitlines() if "layersearch data prepare" in x)

    # The Hub's nyu-mll/glue and Salesforce/wikitext, as local copies in their layout.
    glue = tmp_path / "hub" / "glue"
    local = {n: tasks.load_task(n, str(shared_data / "glue")) for n in ("sst2", "mrpc")}
    _hub_repo(glue, {n: {"train": d["train"], tasks.TASKS[n].dev_split: d["dev"]} for n, d in local.items()})
    lines = (shared_data / "corpus" / "wikitext103" / "wiki.valid.tokens").read_text().splitlines(True)
    wikitext = tmp_path / "hub" / "wikitext"
    _hub_repo(wikitext, {"wikitext-2-raw-v1": {"train": Dataset.from_dict({"text": lines[:3000]})}})
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(tasks, "GLUE_HUB_ID", str(glue))

    overrides = [o.replace("Salesforce/wikitext", str(wikitext)) for o in overrides]
    cfg = load_config(QUICKSTART, overrides=overrides)  # the quickstart as the Makefile runs it
    assert cfg.corpus.paths is None and cfg.tasks.source == "hub"
    check(cfg)  # what validate checks: no data path missing
    for name in cfg.tasks.names:
        from_hub = tasks.load_task(name, cfg.tasks.source)
        for split in ("train", "dev"):
            assert from_hub[split].to_list() == local[name][split].to_list(), (name, split)
    text = load_text(cfg.corpus)
    assert len(text) > 1000 and " @-@ " not in "".join(text["text"][:200])  # cleaned as WikiText
