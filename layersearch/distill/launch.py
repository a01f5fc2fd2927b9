"""Run a distillation job on Ray Train's ``TorchTrainer``: a thin layer over ``job.run_worker``.

Each Ray Train worker runs the same ``run_worker`` a single local worker runs
in the driver's process; Ray Train sets up the process group (gloo on CPUs,
NCCL on GPUs), places one worker per GPU where the cluster has them, and
restarts lost workers (``FailureConfig(max_failures)``), which then continue
from the newest checkpoint. The checkpoint folder must be on storage every
node sees (a shared volume on a cluster), like Ray Train's own storage path.
"""

from __future__ import annotations

import json
from pathlib import Path

from layersearch.config import Config
from layersearch.distill.job import RESULT_FILE, DistillJob, run_worker
from layersearch.errors import UserError

RAY_STORAGE = "ray"  # Ray Train's own run folder, inside the checkpoint folder


class LaunchError(UserError):
    pass


def use_ray(cfg: Config) -> bool:
    """One worker on this machine runs in-process; more, or a cluster address, go through Ray Train."""
    import os

    return cfg.distill.workers > 1 or bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))


def start_ray(cfg: Config) -> None:
    """Connect to the cluster or start a local Ray. Before any SIGTERM handler of ours:
    ``ray.init`` installs its own, which would otherwise replace it."""
    import ray

    if not ray.is_initialized():
        from layersearch.ray_priority import local_worker_priority

        # Worker output (the progress lines) is forwarded to this terminal; a local Ray's
        # workers run at ray.worker_niceness.
        with local_worker_priority(cfg.ray):
            ray.init(address=cfg.ray.address, include_dashboard=False, log_to_driver=True,
                     configure_logging=True, logging_level="WARNING")


def _worker_loop(config: dict) -> None:
    import os

    job = DistillJob(**config)
    if job.workdir and os.path.isdir(job.workdir):
        os.chdir(job.workdir)
    run_worker(job, report_errors=True)


def _use_gpu(cfg: Config) -> bool:
    import ray

    if cfg.distill.use_gpu != "auto":
        return bool(cfg.distill.use_gpu)
    return ray.cluster_resources().get("GPU", 0) > 0


def fit_on_ray(cfg: Config, job: DistillJob, run_name: str) -> dict:
    """Run ``job`` on ``cfg.distill.workers`` Ray Train workers; returns rank 0's result."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    start_ray(cfg)
    gpu = _use_gpu(cfg)
    resources = {"CPU": cfg.distill.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=job.to_dict(),
        scaling_config=ScalingConfig(num_workers=cfg.distill.workers, use_gpu=gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=str((Path(job.checkpoint_dir) / RAY_STORAGE).resolve()),
            failure_config=FailureConfig(max_failures=cfg.distill.max_failures)),
    )
    try:
        trainer.fit()
    except Exception as exc:
        raise LaunchError(f"distill workers failed: {_reason(exc)}") from None
    path = Path(job.checkpoint_dir) / RESULT_FILE
    if not path.is_file():
        raise LaunchError(f"distill workers ended without a result in {path}")
    return json.loads(path.read_text())


def _reason(exc: BaseException) -> str:
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank, first = sorted(failures.items())[0]
        lines = [x for x in str(first).splitlines() if x.strip()]
        return f"worker {rank}: {lines[-1] if lines else type(first).__name__}"[:300]
    lines = [x for x in str(exc).splitlines() if x.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]
