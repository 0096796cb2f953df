"""Writing a generated scene in the project's scene format: the views, their maps and transforms.json.

``make_scene`` is the library function behind ``cl-make-scene``; the benchmarks and tests call it directly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional

import numpy as np
import tyro
from PIL import Image
from rich.console import Console
from rich.markup import escape

from contrastive_lift_ns.atomic import atomic_output_dir, atomic_write_json
from contrastive_lift_ns.console import progress_bar
from contrastive_lift_ns.data.scene_format import (
    CONFIDENCE_KEY,
    GT_INSTANCE_KEY,
    GT_SEMANTICS_KEY,
    SEGMENTS_KEY,
    SEMANTICS_KEY,
    SceneClasses,
    write_confidence,
    write_label_map,
)
from contrastive_lift_ns.drawing.images import contact_sheet, id_image
from contrastive_lift_ns.generator.raycast import Renderer, View
from contrastive_lift_ns.generator.room import VIEW_WIDTH, CameraLayout, MessyRoom, make_room, scene_objects_json
from contrastive_lift_ns.generator.segmenter_noise import PRESETS, SegmenterNoiseConfig, simulate_segments
from contrastive_lift_ns.segmenters import Segments
from contrastive_lift_ns.segmenters.classical import classical_segments

CONSOLE = Console(width=120)
# 16-bit millimetre depth (up to 65.5 m) must reach the sky dome, which grows with the room.
MAX_OBJECTS = 1000
MAX_FLOOR = 14.0
MAX_RESOLUTION = 2048
_PREVIEW_VIEWS = 4
# Sub-folder and transforms.json key of every per-view map.
_FOLDERS = {
    "file_path": "images",
    "depth_file_path": "depth",
    SEGMENTS_KEY: "segments",
    SEMANTICS_KEY: "semantics",
    CONFIDENCE_KEY: "confidence",
    GT_INSTANCE_KEY: "gt_instance",
    GT_SEMANTICS_KEY: "gt_semantics",
}
_RATE_FLAGS = tuple(f.name for f in fields(SegmenterNoiseConfig))


# A segmenter-noise flag: unset means the preset's value.
_FromPreset = Annotated[Optional[float], tyro.conf.arg(metavar="FLOAT", help_behavior_hint="(default: from --preset)")]


class MakeSceneError(ValueError):
    """A bad flag or flag combination; the message names the flag."""


@dataclass
class MakeSceneConfig:
    """Write a Messy-Rooms-style scene: textured objects on a rug, rendered from a dome of cameras or another
    capture layout, with ground-truth instances and depth, and view-inconsistent 2D segments."""

    output_dir: Path = Path("data/messy-room")
    """Folder to write the scene to; it must be empty or absent unless --overwrite is given."""
    seed: int = 0
    """Random seed; the same seed and flags give byte-identical files."""
    num_objects: int = 25
    """Number of objects (1 to 1000); the floor grows with it."""
    num_views: int = 100
    """Number of camera views (at least 2)."""
    resolution: int = 256
    """Image width and height in pixels (16 to 2048)."""
    floor_size: Annotated[
        Optional[float], tyro.conf.arg(metavar="FLOAT", help_behavior_hint="(default: sized from --num-objects)")
    ] = None
    """Side of the square the objects stand in, in metres (at most 14); by default it grows with --num-objects
    to keep the clutter density."""
    camera_layout: CameraLayout = "dome"
    """How the views are captured: dome (the paper's: an inward-looking dome of cameras over the open floor),
    forward (LLFF: a small grid at one edge of the rug, all looking across it), walkthrough (ScanNet: eye-height
    cameras walking a loop over the rug, looking all around) or panorama (one point, turning all around). All
    but dome put walls around the rug and use a 60° field of view; the same seed gives the same objects in each."""
    view_width: float = VIEW_WIDTH
    """Width of floor each view covers, in metres (at most the rug plus a margin), in the dome layout only: 1.5
    shows 20-30 objects per view, as the paper's Messy Rooms do; wider views show more objects, smaller, and
    each object in more views."""
    preset: Literal["clean", "realistic", "hard"] = "realistic"
    """Error rates of the simulated segmenter; the rate flags below override single values."""
    miss_rate: _FromPreset = None
    """Expected fraction of visible objects per view with no segment (small/occluded ones more often)."""
    over_segment_rate: _FromPreset = None
    """Probability that a detected object is split into 2-3 segments."""
    under_segment_rate: _FromPreset = None
    """Probability that two detected objects touching in the image are merged."""
    boundary_px: _FromPreset = None
    """Largest error of segment boundaries in pixels (0-8)."""
    false_positives: _FromPreset = None
    """Mean number of spurious segments on the background per view (0-20)."""
    segmenter: Literal["simulated", "felzenszwalb", "slic"] = "simulated"
    """2D segments from the simulated segmenter, or from scikit-image's Felzenszwalb or SLIC on the RGB."""
    test_every: int = 8
    """Every n-th view (starting with the first) is a test view; the validation views are the test views."""
    preview: bool = False
    """Also write preview.png: a few views as RGB | 2D segments | ground truth."""
    overwrite: bool = False
    """Replace a non-empty --output-dir."""

    def noise(self) -> SegmenterNoiseConfig:
        """The simulated segmenter's rates: the preset with the given rate flags applied."""
        overrides = {name: getattr(self, name) for name in _RATE_FLAGS if getattr(self, name) is not None}
        try:
            return SegmenterNoiseConfig(**{**asdict(PRESETS[self.preset]), **overrides})
        except ValueError as err:
            raise MakeSceneError(str(err)) from None


def make_scene(config: MakeSceneConfig, progress: bool = True) -> Path:
    """Writes the scene described by ``config`` and returns its folder.

    Raises MakeSceneError for bad flags and FileExistsError for a non-empty output folder; in either case,
    and on any other failure, nothing is left at ``config.output_dir``.
    """
    _check(config)
    noise = config.noise()
    start = time.perf_counter()
    with atomic_output_dir(config.output_dir, overwrite=config.overwrite) as root:
        try:
            room = make_room(
                config.num_objects,
                config.num_views,
                config.resolution,
                config.seed,
                config.floor_size,
                config.view_width,
                config.camera_layout,
            )
        except ValueError as err:
            raise MakeSceneError(str(err)) from None
        for folder in _FOLDERS.values():
            (root / folder).mkdir()
        renderer = Renderer(room)
        preview_views = set(
            np.linspace(0, config.num_views - 1, min(_PREVIEW_VIEWS, config.num_views)).round().astype(int).tolist()
        )
        frames: List[Dict[str, Any]] = []
        previews = []
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task("Rendering views", total=config.num_views)
            for index in range(config.num_views):
                view = renderer.render(index)
                if config.segmenter == "simulated":
                    segments = simulate_segments(
                        view.instance, view.unoccluded, noise, np.random.default_rng([config.seed, 1, index])
                    )
                else:
                    segments = classical_segments(view.rgb, view.instance, config.segmenter)
                frames.append(_write_view(root, index, view, segments, room.cameras.camera_to_world[index]))
                if config.preview and index in preview_views:
                    previews.append((view.rgb, segments.ids, view.instance))
                bar.advance(task)
        atomic_write_json(root / "transforms.json", _transforms(config, noise, room, frames))
        if config.preview:
            rows = [(rgb, id_image(segments), id_image(gt)) for rgb, segments, gt in previews]
            Image.fromarray(contact_sheet(rows, ("RGB", "2D segments", "ground truth"))).save(root / "preview.png")
    if progress:
        CONSOLE.print(
            f"Wrote {config.num_views} views of {config.num_objects} objects to {escape(str(config.output_dir))} "
            f"in {time.perf_counter() - start:.1f} s"
        )
    return config.output_dir


def _check(config: MakeSceneConfig) -> None:
    problems = []
    if config.seed < 0:
        problems.append(f"--seed must be a non-negative integer, got {config.seed}")
    if not 1 <= config.num_objects <= MAX_OBJECTS:
        problems.append(f"--num-objects must be between 1 and {MAX_OBJECTS}, got {config.num_objects}")
    if config.num_views < 2:
        problems.append(f"--num-views must be at least 2 (training and test views), got {config.num_views}")
    if not 16 <= config.resolution <= MAX_RESOLUTION:
        problems.append(f"--resolution must be between 16 and {MAX_RESOLUTION} pixels, got {config.resolution}")
    if config.floor_size is not None and not 0 < config.floor_size <= MAX_FLOOR:
        problems.append(f"--floor-size must be between 0 and {MAX_FLOOR:g} metres, got {config.floor_size}")
    if not 0.2 <= config.view_width <= 10:
        problems.append(f"--view-width must be between 0.2 and 10 metres, got {config.view_width}")
    if config.camera_layout != "dome" and config.view_width != VIEW_WIDTH:
        problems.append(f"--view-width only applies to --camera-layout dome, not {config.camera_layout}")
    if config.test_every < 2:
        problems.append(f"--test-every must be at least 2 so that some views are for training, got {config.test_every}")
    given = [name for name in _RATE_FLAGS if getattr(config, name) is not None]
    if config.segmenter != "simulated" and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        problems.append(f"{flags} only apply to --segmenter simulated, not --segmenter {config.segmenter}")
    if problems:
        raise MakeSceneError("; ".join(problems))


def _write_view(root: Path, index: int, view: View, segments: Segments, c2w: np.ndarray) -> Dict[str, Any]:
    name = f"frame_{index:05d}.png"
    paths = {key: f"{folder}/{name}" for key, folder in _FOLDERS.items()}
    Image.fromarray(view.rgb).save(root / paths["file_path"])
    millimetres = np.round(view.depth * 1000.0)
    Image.fromarray(np.where(millimetres <= 65535, millimetres, 0).astype(np.uint16)).save(
        root / paths["depth_file_path"]
    )
    write_label_map(root / paths[SEGMENTS_KEY], segments.ids)
    write_label_map(root / paths[SEMANTICS_KEY], segments.semantics)
    write_confidence(root / paths[CONFIDENCE_KEY], segments.confidence)
    write_label_map(root / paths[GT_INSTANCE_KEY], view.instance)
    write_label_map(root / paths[GT_SEMANTICS_KEY], (view.instance > 0).astype(np.uint8))
    return {**paths, "transform_matrix": [[float(v) for v in row] for row in c2w]}


def _transforms(
    config: MakeSceneConfig, noise: SegmenterNoiseConfig, room: MessyRoom, frames: List[Dict[str, Any]]
) -> Dict[str, Any]:
    test = [frame["file_path"] for i, frame in enumerate(frames) if i % config.test_every == 0]
    train = [frame["file_path"] for i, frame in enumerate(frames) if i % config.test_every != 0]
    classes = SceneClasses()
    res, focal = room.cameras.resolution, room.cameras.focal
    return {
        "camera_model": "OPENCV",
        "fl_x": focal,
        "fl_y": focal,
        "cx": res / 2,
        "cy": res / 2,
        "w": res,
        "h": res,
        "semantic_classes": list(classes.names),
        "thing_classes": list(classes.thing_ids),
        "train_filenames": train,
        "val_filenames": test,
        "test_filenames": test,
        "generator": {
            "command": "cl-make-scene",
            "seed": config.seed,
            "num_objects": config.num_objects,
            "num_views": config.num_views,
            "resolution": config.resolution,
            "floor_size": round(room.floor_size, 6),
            "view_width": config.view_width,
            "segmenter": config.segmenter,
            "preset": config.preset if config.segmenter == "simulated" else None,
            "noise": asdict(noise) if config.segmenter == "simulated" else None,
            # Recorded only off the default, so dome scenes keep the bytes they had before layouts existed.
            **({"camera_layout": config.camera_layout} if config.camera_layout != "dome" else {}),
        },
        "scene_objects": scene_objects_json(room),
        "frames": frames,
    }
