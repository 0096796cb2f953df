"""cl-make-scene: write an offline Messy-Rooms-style benchmark scene in the project's scene format.

Example::

    cl-make-scene --output-dir data/room25 --num-objects 25 --preview
    cl-make-scene --output-dir data/room500 --num-objects 500 --preset hard --seed 3
"""

from __future__ import annotations

import tyro

from contrastive_lift_ns.generator.writer import MakeSceneConfig, MakeSceneError, make_scene
from contrastive_lift_ns.scripts.cli import run_command


def entrypoint() -> None:
    """Entry point of the ``cl-make-scene`` command."""
    config = tyro.cli(MakeSceneConfig)
    run_command("cl-make-scene", lambda: make_scene(config), (MakeSceneError, FileExistsError))


if __name__ == "__main__":
    entrypoint()
