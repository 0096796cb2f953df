"""How long ``cl-make-scene`` takes, end to end including writing the files.

python -m contrastive_lift_ns.benchmarks.make_scene_speed --num-objects 500
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import tyro

from contrastive_lift_ns.scripts.make_scene import MakeSceneConfig, make_scene


def run(num_objects: int = 500, num_views: int = 100, resolution: int = 256, seed: int = 0) -> Dict[str, Any]:
    """Times generating one scene into a temporary folder; prints and returns the figures.

    Args:
        num_objects: objects in the scene.
        num_views: camera views.
        resolution: image width and height in pixels.
        seed: scene seed.
    """
    with tempfile.TemporaryDirectory(prefix="cl-bench-scene-") as tmp:
        config = MakeSceneConfig(
            output_dir=Path(tmp) / "scene",
            seed=seed,
            num_objects=num_objects,
            num_views=num_views,
            resolution=resolution,
        )
        start = time.perf_counter()
        make_scene(config, progress=False)
        seconds = time.perf_counter() - start
        megabytes = sum(p.stat().st_size for p in config.output_dir.rglob("*") if p.is_file()) / 2**20
    result = {
        "benchmark": "make_scene_speed",
        "num_objects": num_objects,
        "num_views": num_views,
        "resolution": resolution,
        "seconds": round(seconds, 2),
        "seconds_per_view": round(seconds / num_views, 4),
        "megabytes": round(megabytes, 1),
        "cpu_cores": os.cpu_count(),
    }
    print(
        f"cl-make-scene: {num_objects} objects x {num_views} views at {resolution}x{resolution}: {seconds:.1f} s "
        f"({1000 * seconds / num_views:.0f} ms/view, {megabytes:.1f} MB, {os.cpu_count()} CPU cores)"
    )
    return result


if __name__ == "__main__":
    tyro.cli(run)
