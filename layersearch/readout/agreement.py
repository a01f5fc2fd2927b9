"""The ``agreement`` readout: how well the student's representations predict the teacher's.

No task labels. On the corpus's held-out blocks (the last
``tasks.agreement.heldout_blocks``, which no proxy slice may hold: see
``data.slices.slice_rows``), the student's and the teacher's last hidden
states are taken token by token. A ridge map from student to teacher is fit
on the first half of the blocks and tested on the second half:

- the score is the held-out R^2 (1 - SSE / SST over every test token and
  teacher dimension). It is stored as one value per test block, 1 - SSE_b /
  (SST / blocks), whose mean is exactly R^2, so the dev-set bootstrap of the
  statistics resamples blocks as it resamples dev examples;
- linear CKA between the two on the test tokens is reported beside it.

The ridge strength is a fixed rule, ``ridge`` times the mean eigenvalue of the
student features' Gram matrix, so it is scale-free and nothing is tuned on
the test half. Deterministic: no random number is drawn.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from layersearch.features import HIDDEN_BATCH as BATCH
from layersearch.features import last_hidden_fp32
from layersearch.readout.finetune import TaskResult

TASK = "agreement"


def last_hidden(model, ids: torch.Tensor, device) -> torch.Tensor:
    """[blocks * tokens, width] float64 last hidden states (blocks are whole: no padding)."""
    out = [last_hidden_fp32(model, ids[b : b + BATCH], device) for b in range(0, len(ids), BATCH)]
    return torch.cat([o.double().reshape(-1, o.shape[-1]) for o in out])


def ridge_r2(x_fit, y_fit, x_test, y_test, ridge: float, test_blocks: int) -> tuple[np.ndarray, float]:
    """(per-test-block values whose mean is R^2, R^2) of a ridge map fit on the fit half."""
    mx, my = x_fit.mean(0), y_fit.mean(0)
    xf, yf = x_fit - mx, y_fit - my
    gram = xf.T @ xf
    alpha = ridge * float(torch.trace(gram)) / gram.shape[0]
    w = torch.linalg.solve(gram + alpha * torch.eye(gram.shape[0], dtype=gram.dtype), xf.T @ yf)
    pred = (x_test - mx) @ w + my
    sse_tokens = ((y_test - pred) ** 2).sum(1)  # [test tokens]
    sst = float(((y_test - y_test.mean(0)) ** 2).sum())
    sse_blocks = sse_tokens.reshape(test_blocks, -1).sum(1)
    values = 1.0 - sse_blocks.numpy() / (sst / test_blocks)
    return values, float(values.mean())


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two sets of representations of the same tokens (Kornblith et al. 2019)."""
    x, y = x - x.mean(0), y - y.mean(0)
    cross = float((y.T @ x).pow(2).sum())
    return cross / float(torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))


class AgreementReadout:
    name = "agreement"

    def __init__(self, cfg, tokenizer, teacher, device: str):
        from layersearch.data.slices import get_heldout

        self.cfg, self.device = cfg.tasks.agreement, device
        ids = get_heldout(cfg.corpus, tokenizer, self.cfg.heldout_blocks)
        self.fit_blocks = len(ids) // 2
        self.test_blocks = len(ids) - self.fit_blocks
        self.ids = ids
        # The teacher's side is the same for every student: computed once, and with the teacher
        # cache on (data.targets), once per machine and shared through corpus.cache_dir.
        from layersearch.data.targets import heldout_states, teacher_cache_on

        kind = torch.device(device).type
        y = (heldout_states(cfg, teacher, ids, kind) if teacher_cache_on(cfg, kind, teacher.config)
             else last_hidden(teacher.to(device), ids, device))
        cut = self.fit_blocks * ids.shape[1]
        self.y_fit, self.y_test = y[:cut], y[cut:]

    def score(self, encoder, seeds: list[int], progress: bool = False) -> list[TaskResult]:
        start = time.perf_counter()
        x = last_hidden(encoder.to(self.device), self.ids, self.device)
        cut = self.fit_blocks * self.ids.shape[1]
        values, r2 = ridge_r2(x[:cut], self.y_fit, x[cut:], self.y_test, self.cfg.ridge, self.test_blocks)
        cka = linear_cka(x[cut:], self.y_test)
        seconds = time.perf_counter() - start
        zeros = np.zeros(self.test_blocks, dtype=np.int64)  # no labels: only the blocks' count pairs units
        return [TaskResult(task=TASK, seed=s, metrics={"r2": r2, "cka": cka}, score=r2,
                           train_examples=self.fit_blocks, dev_examples=self.test_blocks, steps=0,
                           seconds=seconds if i == 0 else 0.0, majority_baseline=0.0,
                           predictions=values.astype(np.float64), labels=zeros)
                for i, s in enumerate(seeds)]
