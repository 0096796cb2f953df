"""How long ``cl-make-scene`` takes, end to end including writing the files.

cl-bench make-scene --num-objects 500
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene


@dataclass
class MakeSceneBenchmark:
    """Times generating one scene into a temporary folder; prints and returns the figures."""

    num_objects: int = 500
    """Objects in the scene."""
    num_views: int = 100
    """Camera views."""
    resolution: int = 256
    """Image width and height in pixels."""
    seed: int = 0
    """Scene seed."""

    def main(self) -> Dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="cl-bench-scene-") as tmp:
            config = MakeSceneConfig(
                output_dir=Path(tmp) / "scene",
                seed=self.seed,
                num_objects=self.num_objects,
                num_views=self.num_views,
                resolution=self.resolution,
            )
            start = time.perf_counter()
            make_scene(config, progress=False)
            seconds = time.perf_counter() - start
            megabytes = sum(p.stat().st_size for p in config.output_dir.rglob("*") if p.is_file()) / 2**20
        print(
            f"cl-make-scene: {self.num_objects} objects x {self.num_views} views at "
            f"{self.resolution}x{self.resolution}: {seconds:.1f} s ({1000 * seconds / self.num_views:.0f} ms/view, "
            f"{megabytes:.1f} MB, {os.cpu_count()} CPU cores)"
        )
        return {
            "num_objects": self.num_objects,
            "num_views": self.num_views,
            "resolution": self.resolution,
            "seconds": round(seconds, 2),
            "megabytes": round(megabytes, 1),
            "cpu_cores": os.cpu_count(),
        }
