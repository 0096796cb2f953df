"""nerfstudio's trainer with crash-safe checkpoints.

- **Atomic checkpoints.** A checkpoint is written in a hidden folder beside the checkpoint folder (nerfstudio
  reads every name in the checkpoint folder as a step) and renamed into place, so a crash while saving leaves
  the previous checkpoints and no partial file.
- **Learning rates fit the run.** Every exponential decay ends at the run's last step, whatever its length
  (nerfacto's decay over 200,000 steps would leave a 2,000-step run near its initial rates). The semantic and
  instance fields start training late (their loss start steps): their rates stay at the initial value until
  then and decay over the rest of the run (``fit_schedules``).
- **Resuming skips unreadable checkpoints.** nerfstudio's ``--load-dir`` takes the newest checkpoint, even one
  cut short by a crash (written by an older version, or copied half-way); this trainer takes the newest one
  that is a complete file instead, and says which it skipped. A folder with no complete checkpoint stops the
  run before anything loads, with one line that says so.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Type

from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape

from contrastive_lift_ns import workarounds
from contrastive_lift_ns.private_apis import start_step


@dataclass
class ContrastiveLiftTrainerConfig(TrainerConfig):
    """nerfstudio's trainer configuration, with crash-safe checkpoints."""

    _target: Type = field(default_factory=lambda: ContrastiveLiftTrainer)
    """Target class to instantiate."""


class ContrastiveLiftTrainer(Trainer):
    """Writes checkpoints atomically and resumes from the newest complete one."""

    config: ContrastiveLiftTrainerConfig

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        workarounds.activate()  # before nerfstudio builds its GradScaler, which warns on a CPU
        super().__init__(config, local_rank, world_size)

    def setup(self, test_mode="val") -> None:
        if self.config.load_dir is not None and self.config.load_step is None:
            try:
                self.config.load_step = newest_complete_checkpoint(Path(self.config.load_dir))
            except (FileNotFoundError, ValueError) as err:  # ns-train is nerfstudio's: one line, no traceback
                CONSOLE.print(f"[bold red]error:[/bold red] {escape(str(err))}")
                sys.exit(1)
        fit_schedules(self.config)
        super().setup(test_mode)

    @property
    def last_step(self) -> int:
        """The last step this run trains."""
        return start_step(self) + self.config.max_num_iterations - 1

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        final = self.checkpoint_dir
        final.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.saving-", dir=final.parent))
        self.checkpoint_dir = staging  # nerfstudio writes (and prunes) there; the file then moves into place
        try:
            super().save_checkpoint(step)
            written = staging / f"step-{step:09d}.ckpt"
            os.replace(written, final / written.name)
            if self.config.save_only_latest_checkpoint:
                for old in final.glob("*.ckpt"):
                    if old.name != written.name:
                        old.unlink()
        finally:
            self.checkpoint_dir = final
            shutil.rmtree(staging, ignore_errors=True)


def fit_schedules(config: TrainerConfig) -> None:
    """Sets every exponential decay to end at the run's last step; the label fields' decays start at their
    loss's start step."""
    model = config.pipeline.model
    first = 0 if config.load_step is None else config.load_step + 1  # nerfstudio counts the steps from there
    end = first + config.max_num_iterations
    starts = {
        "semantic_field": getattr(model, "semantic_loss_start_step", 0),
        "instance_field": getattr(model, "instance_loss_start_step", 0),
    }
    for group, settings in config.optimizers.items():
        scheduler = settings.get("scheduler")
        if not isinstance(scheduler, ExponentialDecaySchedulerConfig):
            continue
        start = starts.get(group, 0)
        if start > 0:
            scheduler.lr_pre_warmup = settings["optimizer"].lr  # constant until the stage starts
            scheduler.warmup_steps = start
        scheduler.max_steps = max(end, scheduler.warmup_steps + 1)


def newest_complete_checkpoint(folder: Path) -> int:
    """The step of the newest checkpoint in ``folder`` that is a complete file, warning about any newer ones that
    are not."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--load-dir {folder}: no such folder")
    checkpoints = sorted(folder.glob("step-*.ckpt"), reverse=True)
    if not checkpoints:
        raise FileNotFoundError(f"--load-dir {folder}: no checkpoint (step-*.ckpt) in it")
    for path in checkpoints:
        try:
            with zipfile.ZipFile(path) as archive:  # torch checkpoints are zip files; a cut one has no directory
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as err:
            CONSOLE.print(f"[yellow]Skipping the unreadable checkpoint {path} ({err}); resuming from an older one")
            continue
        return int(path.stem.split("-")[1])
    raise ValueError(
        f"--load-dir {folder}: none of its {len(checkpoints)} checkpoints is a complete file (cut short while "
        "written or copied); copy them again, or start without --load-dir"
    )
