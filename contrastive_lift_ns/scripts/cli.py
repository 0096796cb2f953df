"""What the ``cl-*`` commands share: loading a trained run with clear errors, checking that an output can be
written before any long work, and reporting a user's mistake as one line."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Tuple, Type

import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape


class RunError(ValueError):
    """A run that cannot be loaded (missing config, checkpoint or scene) or an output that cannot be written."""


def run_command(name: str, command: Callable[[], object], errors: Tuple[Type[Exception], ...]) -> None:
    """Runs ``command``; one of ``errors`` (bad input or flags) is printed as one line and exits with status 2,
    without a traceback."""
    try:
        command()
    except errors as err:
        CONSOLE.print(f"[bold red]{name}: error:[/bold red] {escape(str(err))}")
        sys.exit(2)


def load_run(load_config: Path, step: Optional[int] = None) -> Tuple[TrainerConfig, Pipeline, int]:
    """nerfstudio's ``eval_setup`` of a trained run (its newest checkpoint, or the one of ``step``), after
    checking that the config, the checkpoint and the scene folder are where the config says."""
    if not load_config.is_file():
        raise RunError(f"--load-config {load_config}: no such file")
    try:
        config = yaml.load(load_config.read_text(), Loader=yaml.Loader)
    except yaml.YAMLError as err:
        raise RunError(f"--load-config {load_config}: not a readable config.yml ({err})") from None
    if not isinstance(config, TrainerConfig):
        raise RunError(f"--load-config {load_config}: not a nerfstudio config.yml")
    checkpoints = config.get_checkpoint_dir()
    steps = sorted(int(p.stem.split("-")[1]) for p in checkpoints.glob("step-*.ckpt")) if checkpoints.is_dir() else []
    if not steps:
        raise RunError(f"--load-config {load_config}: no checkpoint (step-*.ckpt) in {checkpoints}")
    if step is not None and step not in steps:
        raise RunError(f"--step {step}: no checkpoint of that step in {checkpoints}; there are steps {steps}")
    datamanager = config.pipeline.datamanager
    data = datamanager.data if datamanager.data is not None else datamanager.dataparser.data  # as nerfstudio reads it
    if not Path(data).exists():
        raise RunError(
            f"--load-config {load_config}: the scene it was trained on, {data}, no longer exists; move it back, or "
            "edit pipeline.datamanager.data in the config"
        )

    def at_step(trainer: TrainerConfig) -> TrainerConfig:
        trainer.load_step = step
        return trainer

    config, pipeline, _, loaded = eval_setup(load_config, test_mode="test", update_config_callback=at_step)
    return config, pipeline, loaded


def check_writable(path: Path, flag: str, folder: bool) -> None:
    """Raises RunError unless ``path`` can be created or replaced: it is a file (``folder=False``) or a folder,
    and the nearest existing folder above it takes a new file (tried, so read-only mounts count too)."""
    if path.exists() and path.is_dir() != folder:
        raise RunError(
            f"{flag} {path} is {'a file' if folder else 'a folder'}; give a {'folder' if folder else 'file'} path"
        )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunError(f"{flag} {path}: {parent} is a file, not a folder")
    try:
        descriptor, probe = tempfile.mkstemp(dir=parent, prefix=".cl-write-test-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        raise RunError(f"{flag} {path}: cannot write in {parent} ({err.strerror or err})") from None
