"""The ``probe`` readout: a linear probe on the frozen student, no fine-tuning.

Each task's train and dev examples are embedded once by the frozen student
(attention-masked mean pool of the last layer, or of every layer concatenated),
standardised with the train split's statistics, and an L2-regularised logistic
regression is fit to convergence (L-BFGS). Its strength is a fixed C or is
chosen by stratified 3-fold cross-validation on the train split alone, so dev
labels never decide anything but the score. Dev predictions are scored by the
same Matthews correlation as every readout.

Nothing here draws a random number: the same student gives the same
predictions, so a unit is one proxy slice and more fine-tune seeds would only
repeat it.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from layersearch.data.tasks import TASKS, score
from layersearch.readout.finetune import TaskEncodings, TaskResult, _batch, dev_batches

CV_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # C values tried by "cv" (C = 1 / L2 strength; features standardised)
FOLDS = 3
CV_TOL, FINAL_TOL = 1e-4, 1e-6  # choosing C needs a ranking; the probe itself is fit to convergence
MAX_ITER = 5000


@torch.no_grad()
def embed(encoder, tokenizer, features: list[dict], batch_size: int, device, layers: str) -> np.ndarray:
    """[examples, features] mean-pooled hidden states (float64), in ``features``' order."""
    encoder.eval()
    out: np.ndarray | None = None
    for idx in dev_batches(features, batch_size):  # length-sorted: less padding, same numbers per example
        batch = _batch(tokenizer, [features[i] for i in idx], device)
        states = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch.get("token_type_ids"), output_hidden_states=True).hidden_states
        chosen = states[-1:] if layers == "last" else states
        mask = batch["attention_mask"].unsqueeze(-1).to(chosen[0].dtype)
        pooled = torch.cat([(h * mask).sum(1) / mask.sum(1).clamp(min=1) for h in chosen], dim=-1)
        if out is None:
            out = np.empty((len(features), pooled.shape[-1]), dtype=np.float64)
        out[idx] = pooled.double().cpu().numpy()
    return out


def _fit(x: np.ndarray, y: np.ndarray, c: float, tol: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=MAX_ITER, tol=tol).fit(x, y)


def choose_c(x_train: np.ndarray, y_train: np.ndarray) -> float:
    """The C of ``CV_GRID`` whose stratified k-fold predictions on the train split score the best
    Matthews correlation (the stronger regularisation on a tie). Dev plays no part."""
    from sklearn.metrics import matthews_corrcoef
    from sklearn.model_selection import StratifiedKFold

    folds = min(FOLDS, int(np.bincount(y_train).min()))
    if folds < 2:
        return 1.0  # too few examples of a class to cross-validate: the library default
    splits = list(StratifiedKFold(folds).split(x_train, y_train))  # unshuffled: no random draw
    best, best_c = -np.inf, CV_GRID[0]
    for c in CV_GRID:
        held = np.empty_like(y_train)
        for fit_idx, test_idx in splits:
            held[test_idx] = _fit(x_train[fit_idx], y_train[fit_idx], c, CV_TOL).predict(x_train[test_idx])
        mcc = matthews_corrcoef(y_train, held)
        if mcc > best + 1e-12:
            best, best_c = mcc, c
    return best_c


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, c: float | str):
    """(fitted classifier, the C it uses), standardised features in; dev plays no part."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # MAX_ITER is generous; the fit is used as it is
        warnings.simplefilter("ignore", FutureWarning)  # sklearn announcing defaults this code sets itself
        c = choose_c(x_train, y_train) if c == "cv" else float(c)
        return _fit(x_train, y_train, c, FINAL_TOL), c


class ProbeReadout:
    name = "probe"

    def __init__(self, tasks_cfg, tokenizer, datasets: dict, device: str):
        self.tasks, self.tokenizer, self.device = tasks_cfg, tokenizer, device
        probe = tasks_cfg.probe
        # The probe's own train subset (often larger than fine-tuning's: a convex fit is cheap).
        ft = tasks_cfg.finetune.model_copy(update={"train_examples": probe.train_examples})
        self.encoded = TaskEncodings(tokenizer, datasets, ft)

    def score_task(self, encoder, task: str, seed: int) -> TaskResult:
        start = time.perf_counter()
        cfg = self.tasks.probe
        train, dev = self.encoded.train(task, seed), self.encoded.dev(task)
        bs = self.tasks.finetune.batch_size
        x_train = embed(encoder, self.tokenizer, train.features, bs, self.device, cfg.features)
        x_dev = embed(encoder, self.tokenizer, dev.features, bs, self.device, cfg.features)
        mean, std = x_train.mean(0), x_train.std(0)
        std[std < 1e-12] = 1.0  # a constant feature carries nothing; keep it finite
        clf, c = fit_probe((x_train - mean) / std, train.labels, cfg.c)
        preds = clf.predict((x_dev - mean) / std).astype(np.int64)
        metrics = {**score(task, preds, dev.labels), "probe_c": c}
        return TaskResult(task=task, seed=seed, metrics=metrics, score=next(iter(metrics.values())),
                          train_examples=len(train.features), dev_examples=len(dev.features),
                          steps=int(np.max(clf.n_iter_)), seconds=time.perf_counter() - start,
                          majority_baseline=self.encoded.majority_baseline(task), predictions=preds,
                          labels=dev.labels)

    def score(self, encoder, seeds: list[int], progress: bool = False) -> list[TaskResult]:
        encoder = encoder.to(self.device)
        out = []
        for task in self.tasks.names:
            if len(TASKS[task].label_names) < 2:
                raise ValueError(f"{task}: a probe needs a classification task")
            first = self.score_task(encoder, task, seeds[0])
            out.append(first)
            # The same student gives the same probe: further seeds are the same unit again.
            out.extend(TaskResult(**{**first.__dict__, "seed": s, "seconds": 0.0}) for s in seeds[1:])
        return out
