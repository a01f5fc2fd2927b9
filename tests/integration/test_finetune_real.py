"""Fine-tuning the offline teacher on real SST-2: a trained encoder is told apart from a random one.

    pytest -q -s -m slow tests/integration/test_finetune_real.py   # -s prints the figures
"""

from __future__ import annotations

import pytest
import torch

from layersearch.config import parse_config
from layersearch.data.tasks import load_task
from layersearch.models import build_student, load_teacher, load_tokenizer
from layersearch.readout.finetune import finetune_task

pytestmark = pytest.mark.slow

TEACHER = "offline:minilm-l6"


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(TEACHER, attentions=False)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TEACHER)


@pytest.fixture(scope="module")
def sst2(shared_data):
    return load_task("sst2", str(shared_data / "glue"))


@pytest.fixture
def budget(quickstart_raw):
    """The quickstart's fine-tuning budget, exactly as configs/quickstart.yaml sets it."""
    return parse_config(quickstart_raw).tasks.finetune


def _report(label, r):
    print(f"\n{label}: sst2 {r.metrics} majority {r.majority_baseline:.3f} "
          f"steps {r.steps} {r.seconds:.1f}s loss {r.loss_curve[0]:.3f}->{r.loss_curve[-1]:.3f}")


def test_teacher_beats_majority_on_sst2(teacher, tokenizer, sst2, budget):
    r = finetune_task(teacher, tokenizer, "sst2", sst2, budget, seed=0)
    _report("teacher", r)
    assert (r.train_examples, r.dev_examples, r.steps) == (800, 872, 50)  # the whole dev split
    assert r.score >= r.majority_baseline + 0.10


def test_random_student_does_not(teacher, tokenizer, sst2, budget):
    torch.manual_seed(0)
    student = build_student(teacher.config, attentions=False)
    r = finetune_task(student, tokenizer, "sst2", sst2, budget, seed=0)
    _report("random student", r)
    assert r.score < r.majority_baseline + 0.05
