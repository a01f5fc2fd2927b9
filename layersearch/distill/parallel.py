"""Data parallelism for the trainer: which worker this is, its share of a batch, and agreement.

One process is a world of one and every method is then free. Under Ray Train
(or any ``torch.distributed`` launcher) the process group already exists:
each worker reads its own equal share of every global micro-batch, the student
and its projections are wrapped in DDP (gradients averaged), and logged values
and stop/failure flags are reduced so that every worker takes the same
decision at the same step. Each shard's loss is a mean over its equal part of
the batch, so W workers with batch b/W compute the gradient one worker computes
with batch b for every objective that is a mean over examples of equal weight
(the hidden-state, attention and relation losses on corpus blocks, which hold
no padding). WID's MLM loss is a mean over each shard's masked tokens, whose
count varies by shard: there the average of shard means weights tokens a little
unequally, as data-parallel MLM training usually does.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Workers:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Workers:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This worker's contiguous equal part of a global micro-batch's row indices."""
        if self.world_size == 1:
            return rows
        per = rows.shape[0] // self.world_size
        return rows[self.rank * per:(self.rank + 1) * per]

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        if self.world_size == 1:
            return module
        # Unused parameters are normal here (an unmapped layer's projection, the pooler).
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None,
            find_unused_parameters=True)

    @staticmethod
    def accumulating(module: nn.Module, last: bool) -> AbstractContextManager:
        """Around one micro-step's forward and backward: on every micro-step of gradient
        accumulation but the last, DDP keeps its gradients local (``no_sync``) instead of
        all-reducing them, once per optimizer step instead of once per micro-step."""
        if last or not isinstance(module, nn.parallel.DistributedDataParallel):
            return nullcontext()
        return module.no_sync()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        if self.world_size == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def any(self, *flags: bool, device: torch.device) -> list[bool]:
        if self.world_size == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
