"""keep_freed_memory: freed big blocks stay in the process, and the opt-out works.

Each case runs in a fresh interpreter, since malloc settings are process-wide
and the module remembers that it applied them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

# Allocate and touch 256 MiB, free it, and report whether the pages are still resident.
PROBE = """
import json, os
from layersearch.cpu_memory import keep_freed_memory
applied = keep_freed_memory()
again = keep_freed_memory()
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
import torch
base = rss()
block = torch.ones(64 * 2**20)  # 256 MiB of float32, every page touched
block = None
print(json.dumps({"applied": applied, "again": again, "kept": rss() - base}))
"""


def probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_block_stays_resident():
    got = probe(LAYERSEARCH_KEEP_FREED_MEMORY="1")
    assert got["applied"] and got["again"]
    assert got["kept"] > 200 * 2**20  # the 256 MiB block is reused, not unmapped


def test_opt_out_leaves_malloc_alone():
    got = probe(LAYERSEARCH_KEEP_FREED_MEMORY="0")
    assert not got["applied"] and not got["again"]
    assert got["kept"] < 64 * 2**20  # glibc unmapped the block on free
