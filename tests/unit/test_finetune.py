"""Fine-tuning on synthetic tasks with a tiny random BERT: determinism, isolation, learning."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import BertConfig, BertModel, BertTokenizerFast

from layersearch.config import FinetuneConfig, TasksConfig
from layersearch.errors import UserError
from layersearch.readout.finetune import (
    FinetuneDivergence,
    TaskResult,
    encode,
    finetune_all,
    finetune_task,
)

WORDS = [f"w{i}" for i in range(60)] + ["good", "movie", "film", "plot"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A short budget for the mechanics, and one that learns the "good" rule for every seed
# tried (learning it is a sudden jump, so the margin is in epochs).
FAST = FinetuneConfig(
    train_examples=None, epochs=1, learning_rate=1e-3, batch_size=16, seq_length=16
)
LEARN = FAST.model_copy(update={"epochs": 6, "learning_rate": 3e-3, "seq_length": 32})


def _sentence(rng: random.Random, good: bool) -> str:
    words = [rng.choice(WORDS[:-4]) for _ in range(rng.randint(3, 8))]
    if good:
        words.insert(rng.randrange(len(words) + 1), "good")
    return " ".join(words)


def _split(n: int, seed: int, pair: bool) -> Dataset:
    rng = random.Random(seed)
    labels = [rng.randint(0, 1) for _ in range(n)]
    if pair:  # the rule lives in the second sentence only
        return Dataset.from_dict({
            "sentence1": [_sentence(rng, False) for _ in labels],
            "sentence2": [_sentence(rng, bool(y)) for y in labels],
            "label": labels,
        })
    return Dataset.from_dict({"sentence": [_sentence(rng, bool(y)) for y in labels],
                              "label": labels})


def _data(pair: bool = False, n_train: int = 320, n_dev: int = 100) -> DatasetDict:
    return DatasetDict(train=_split(n_train, 1, pair), dev=_split(n_dev, 2, pair))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models run several times faster on one thread than on two contended ones.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(SPECIAL + WORDS) + "\n")
    return BertTokenizerFast(vocab=str(path))


@pytest.fixture
def encoder(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    return BertModel(config).eval()


def test_same_seed_is_identical_and_seeds_differ(encoder, tokenizer):
    data = _data()
    a = finetune_task(encoder, tokenizer, "sst2", data, FAST, seed=0)
    b = finetune_task(encoder, tokenizer, "sst2", data, FAST, seed=0)
    c = finetune_task(encoder, tokenizer, "sst2", data, FAST, seed=1)
    assert isinstance(a, TaskResult)
    assert a.loss_curve == b.loss_curve and a.metrics == b.metrics and a.score == b.score
    assert a.loss_curve != c.loss_curve
    assert a.steps == len(a.loss_curve) == 20  # 320 examples / batch 16
    assert a.score == a.metrics["accuracy"] and a.seconds > 0


def test_caller_encoder_is_untouched(encoder, tokenizer):
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    grads = [p.requires_grad for p in encoder.parameters()]
    finetune_task(encoder, tokenizer, "sst2", _data(), FAST, seed=0)
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in encoder.parameters()] == grads
    assert not encoder.training


def test_learns_the_rule_well_above_chance(encoder, tokenizer):
    result = finetune_task(encoder, tokenizer, "sst2", _data(), LEARN, seed=0)
    assert result.score > 0.9, result
    assert 0.3 < result.majority_baseline < 0.7
    assert result.loss_curve[-1] < result.loss_curve[0]


def test_model_directory_input(encoder, tokenizer, tmp_path):
    encoder.save_pretrained(tmp_path / "student")
    from_dir = finetune_task(tmp_path / "student", tokenizer, "sst2", _data(), FAST, seed=0)
    in_memory = finetune_task(encoder, tokenizer, "sst2", _data(), FAST, seed=0)
    # Same weights, same seeded head init: a saved student scores as it did in memory.
    assert from_dir.loss_curve == in_memory.loss_curve and from_dir.metrics == in_memory.metrics


def test_huge_learning_rate_diverges(encoder, tokenizer):
    cfg = FAST.model_copy(update={"learning_rate": 1e6})
    with pytest.raises(FinetuneDivergence, match=r"sst2 diverged at step \d+") as info:
        finetune_task(encoder, tokenizer, "sst2", _data(), cfg, seed=0)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_nan_weights_diverge_at_first_step(encoder, tokenizer):
    with torch.no_grad():
        encoder.embeddings.word_embeddings.weight[:] = float("nan")
    with pytest.raises(FinetuneDivergence, match="step 1/"):
        finetune_task(encoder, tokenizer, "sst2", _data(), FAST, seed=0)


def test_subsampling_counts_and_fractional_epochs(encoder, tokenizer):
    cfg = FAST.model_copy(update={"train_examples": 100, "dev_examples": 30, "epochs": 1.5})
    r = finetune_task(encoder, tokenizer, "sst2", _data(), cfg, seed=0)
    assert (r.train_examples, r.dev_examples) == (100, 30)
    assert r.steps == len(r.loss_curve) == 11  # ceil(1.5 * ceil(100 / 16))
    # More than there is: everything is used.
    cfg = FAST.model_copy(update={"train_examples": 10_000, "dev_examples": 10_000})
    r = finetune_task(encoder, tokenizer, "sst2", _data(), cfg, seed=0)
    assert (r.train_examples, r.dev_examples) == (320, 100)


def test_pair_task_encodes_both_sentences(encoder, tokenizer):
    data = _data(pair=True)
    row = encode(tokenizer, "rte", data["train"].select([0]), 64)[0]
    sep = tokenizer.sep_token_id
    assert row["input_ids"].count(sep) == 2 and 1 in row["token_type_ids"]
    # The label depends on the second sentence only, so learning it proves it is read.
    result = finetune_task(encoder, tokenizer, "rte", data, LEARN, seed=0)
    assert result.score > 0.9, result


def test_finetune_all_covers_tasks_and_seeds(encoder, tokenizer):
    cfg = TasksConfig(names=["sst2", "rte"],
                      finetune=FAST.model_copy(update={"train_examples": 64, "seeds": [0, 1]}))
    results = finetune_all(encoder, tokenizer, cfg, {"sst2": _data(), "rte": _data(pair=True)})
    assert [(r.task, r.seed) for r in results] == [("sst2", 0), ("sst2", 1), ("rte", 0), ("rte", 1)]
