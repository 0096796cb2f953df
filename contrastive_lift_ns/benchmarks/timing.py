"""Timed training: nerfstudio's own trainer, stepped by hand so that each step can be timed.

Each step runs exactly what ``Trainer.train`` runs (callbacks before, ``train_iteration``, callbacks after);
evaluation, logging and checkpoints are left out of the timed region. Steps on which the model re-clustered
are reported apart, so the step time measures the training step alone.
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer


@dataclass
class TimedRun:
    """What a timed training measured."""

    trainer: Trainer
    step_seconds: List[float] = field(default_factory=list)
    """Wall time of each step after the warm-up, clustering steps excluded."""
    cpu_step_seconds: List[float] = field(default_factory=list)
    """CPU time of this process (all threads) in the same steps: on a shared CPU it varies less than wall time."""
    cluster_seconds: List[float] = field(default_factory=list)
    """Wall time of the steps that re-clustered."""
    peak_mb: float = float("nan")
    """Peak memory (``peak_memory_mb``) read after the last training step that did not re-cluster, so that
    rendering for a clustering at the end of training does not count. It is the process's, so it is one
    model's own only when the model trained alone."""

    # Means, not medians: steps that update the proposal networks cost more than the others, so step times
    # are bimodal and a median jumps between the modes.
    @property
    def mean_step(self) -> float:
        return statistics.fmean(self.step_seconds) if self.step_seconds else float("nan")

    @property
    def mean_cpu_step(self) -> float:
        return statistics.fmean(self.cpu_step_seconds) if self.cpu_step_seconds else float("nan")

    @property
    def checkpoint(self) -> Path:
        return self.trainer.checkpoint_dir / f"step-{self.trainer.step:09d}.ckpt"


def quiet(config: TrainerConfig, output_dir: Path) -> TrainerConfig:
    """A copy of ``config`` that trains on its own without a viewer, console table or evaluation."""
    config = copy.deepcopy(config)
    config.output_dir = output_dir
    config.vis = "tensorboard"
    config.viewer.quit_on_train_completion = True
    config.logging.local_writer.enable = False
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.steps_per_save = 10**9
    config.set_timestamp()
    return config


def train_timed(
    config: TrainerConfig, steps: int, warmup: int = 10, save: bool = True, local_rank: int = 0, world_size: int = 1
) -> TimedRun:
    """Sets up ``config``'s trainer (as rank ``local_rank`` of ``world_size`` processes) and runs ``steps``
    steps, timing those after ``warmup``."""
    (run,) = train_interleaved([config], steps, warmup, local_rank, world_size)
    if save:
        run.trainer.save_checkpoint(steps - 1)
    return run


def train_interleaved(
    configs: Sequence[TrainerConfig], steps: int, warmup: int = 10, local_rank: int = 0, world_size: int = 1
) -> List[TimedRun]:
    """Trains several models in one process, one step of each in turn, so that a slow spell of a shared
    machine falls on all of them alike: their step times can be compared side by side."""
    runs = []
    for config in configs:
        config.max_num_iterations = steps
        config.save_config()
        trainer = config.setup(local_rank=local_rank, world_size=world_size)
        trainer.setup()
        runs.append(TimedRun(trainer))
    for step in range(steps):
        for run in runs:
            _timed_step(run, step, warmup)
    writer.write_out_storage()
    return runs


def _timed_step(run: TimedRun, step: int, warmup: int) -> None:
    trainer = run.trainer
    model = trainer.pipeline.model
    trainer.step = step
    clusters_before = getattr(model, "clusters", None) and model.clusters.ids
    start, cpu_start = time.perf_counter(), time.process_time()
    with trainer.train_lock:
        trainer.pipeline.train()
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    if trainer.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if getattr(model, "clusters", None) is not None and model.clusters.ids is not clusters_before:
        run.cluster_seconds.append(seconds)
        return
    run.peak_mb = peak_memory_mb(trainer.device)
    if step >= warmup:
        run.step_seconds.append(seconds)
        run.cpu_step_seconds.append(time.process_time() - cpu_start)


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated by torch, or this process's peak resident memory on the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """The device, processor and torch version, for benchmark reports."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{device}, {platform.processor() or platform.machine()}, torch {torch.__version__}"
