"""cl-segment: run a 2D segmenter on every image of a scene and add its maps to ``transforms.json``.

Example::

    ns-process-data images --data photos/ --output-dir scene/
    cl-segment --data scene/ --segmenter mask2former
    ns-train contrastive-lift --data scene/

The maps go to ``cl-segment-<segmenter>/{segments,semantics,confidence}/`` in the scene folder, named after the
images. A rerun with the same segmenter replaces that folder; nothing else in the scene is changed. The maps are
written first; then the original ``transforms.json`` is copied to ``transforms.json.bak`` (unless a backup is
already there: the first one, the file before any cl-segment run, is kept) and ``transforms.json`` is rewritten
atomically with ``segments_path``, ``semantics_path`` and ``confidence_path`` per frame and the segmenter's
``semantic_classes``, ``thing_classes`` and ``void_class``. A failure at any point leaves ``transforms.json`` as
it was, and a failure while segmenting leaves no maps behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

import numpy as np
import tyro
from PIL import Image
from rich.console import Console
from rich.markup import escape

from contrastive_lift_ns.data import scene_format as sf
from contrastive_lift_ns.scripts.cli import progress_bar, run_command
from contrastive_lift_ns.segmenters import Segmenter, SegmenterError, Segments

CONSOLE = Console(width=120)
_MAPS = {sf.SEGMENTS_KEY: "segments", sf.SEMANTICS_KEY: "semantics", sf.CONFIDENCE_KEY: "confidence"}


class SegmentError(ValueError):
    """A bad flag or scene; the message names the flag, frame or file."""


@dataclass
class SegmentConfig:
    """Run a 2D segmenter on every image listed in a scene's transforms.json and add its segment, semantic and
    confidence maps to it (the original is kept as transforms.json.bak)."""

    data: Path
    """Scene folder with a transforms.json (from ns-process-data or cl-make-scene), or the JSON file itself."""
    segmenter: Literal["mask2former", "sam", "felzenszwalb"] = "mask2former"
    """mask2former: panoptic with the model's classes (the paper's choice); sam: instances of one "object" class;
    felzenszwalb: classical, no weights (a fallback)."""
    model: Optional[str] = None
    """Hugging Face Hub name or local folder of the weights (default: facebook/mask2former-swin-large-coco-panoptic
    for mask2former, facebook/sam-vit-huge for sam). Not for felzenszwalb."""
    device: Optional[Literal["cpu", "cuda"]] = None
    """Where the model runs (default: cuda when there is a GPU)."""
    batch_size: int = 4
    """Images per forward pass (consecutive images of the same size)."""
    score_threshold: Optional[float] = None
    """Drop segments scoring below this, in [0, 1] (default: 0.8 on mask2former's class score, 0.88 on sam's
    predicted IoU). Not for felzenszwalb."""
    points_per_side: Optional[int] = None
    """sam only: the grid of point prompts has this many points per image side (default: 32)."""


def segment(config: SegmentConfig, progress: bool = True) -> Path:
    """Segments every image of ``config.data``, updates its transforms.json and returns that file's path.

    Raises SegmentError for bad flags or scene files and SegmenterError when the segmenter cannot be set up;
    then, as on any other failure, transforms.json is unchanged.
    """
    start = time.perf_counter()
    device = _check(config)
    try:
        meta, transforms = sf.load_transforms(config.data)
    except sf.SceneFormatError as err:
        raise SegmentError(f"--data: {err}") from None
    root = transforms.parent
    images = _image_paths(meta, root)
    names = _map_names(images)
    segmenter = _load(config, device)
    folder = f"cl-segment-{config.segmenter}"
    with sf.atomic_output_dir(root / folder, overwrite=True) as out:
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task(f"Segmenting with {config.segmenter}", total=len(images))
            for indices, batch in _batches(images, config.batch_size):
                for index, maps in zip(indices, segmenter.segment(batch)):
                    _write_maps(out, names[index], maps, batch[0].shape[:2], images[index])
                bar.advance(task, len(indices))
    for frame, name in zip(meta["frames"], names):
        frame.update({key: f"{folder}/{sub}/{name}" for key, sub in _MAPS.items()})
    _set_classes(meta, segmenter.classes)
    backup = transforms.with_name(transforms.name + ".bak")
    kept = backup.exists()
    if not kept:
        _copy_atomically(transforms, backup)
    sf.atomic_write_json(transforms, meta)
    if progress:
        note = f"kept the earlier backup {backup.name}" if kept else f"the original is now {backup.name}"
        CONSOLE.print(
            f"Segmented {len(images)} images in {time.perf_counter() - start:.1f} s: maps in "
            f"{escape(str(root / folder))}, {escape(str(transforms))} updated ({escape(note)})"
        )
    return transforms


def entrypoint() -> None:
    """Entry point of the ``cl-segment`` command."""
    config = tyro.cli(SegmentConfig)
    run_command("cl-segment", lambda: segment(config), (SegmentError, SegmenterError))


def _check(config: SegmentConfig) -> str:
    """Validates the flags; returns the device."""
    problems = []
    if config.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.score_threshold is not None and not 0.0 <= config.score_threshold <= 1.0:
        problems.append(f"--score-threshold must lie in [0, 1], got {config.score_threshold}")
    if config.points_per_side is not None and config.points_per_side < 1:
        problems.append(f"--points-per-side must be at least 1, got {config.points_per_side}")
    only = {"model": ("mask2former", "sam"), "score_threshold": ("mask2former", "sam"), "points_per_side": ("sam",)}
    for flag, segmenters in only.items():
        if getattr(config, flag) is not None and config.segmenter not in segmenters:
            problems.append(f"--{flag.replace('_', '-')} does not apply to --segmenter {config.segmenter}")
    import torch  # slow to import: not needed for --help

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        problems.append("--device cuda: no CUDA GPU is available")
    if problems:
        raise SegmentError("; ".join(problems))
    return device


def _image_paths(meta: Dict[str, Any], root: Path) -> List[Path]:
    paths = []
    for index, frame in enumerate(meta["frames"]):
        if "file_path" not in frame:
            raise SegmentError(f"frame {index} of transforms.json has no 'file_path'")
        path = root / frame["file_path"]
        if not path.is_file():
            raise SegmentError(f"frame '{frame['file_path']}': {path}: file not found")
        paths.append(path)
    return paths


def _map_names(images: List[Path]) -> List[str]:
    """Each image's path below the images' common folder, as a .png name (unique, so no map overwrites another)."""
    resolved = [p.resolve() for p in images]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names = [p.relative_to(common).with_suffix(".png").as_posix() for p in resolved]
    seen: Dict[str, Path] = {}
    for name, path in zip(names, images):
        if name in seen:
            raise SegmentError(f"{seen[name]} and {path} would share the map name '{name}'; rename one of them")
        seen[name] = path
    return names


def _load(config: SegmentConfig, device: str) -> Segmenter:
    if config.segmenter == "mask2former":
        from contrastive_lift_ns.segmenters.mask2former import Mask2Former

        return Mask2Former(config.model, device, config.score_threshold)
    if config.segmenter == "sam":
        from contrastive_lift_ns.segmenters.sam import Sam

        return Sam(config.model, device, config.score_threshold, config.points_per_side)
    from contrastive_lift_ns.segmenters.felzenszwalb import Felzenszwalb

    return Felzenszwalb()


def _batches(images: List[Path], batch_size: int) -> Iterator[Tuple[List[int], List[np.ndarray]]]:
    """Consecutive images as RGB arrays, at most batch_size at a time and of one size per batch."""
    indices: List[int] = []
    batch: List[np.ndarray] = []
    for index, path in enumerate(images):
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
        except Exception as err:  # PIL raises many types for corrupt files
            raise SegmentError(f"{path}: unreadable image ({err})") from None
        if batch and (len(batch) == batch_size or rgb.shape != batch[0].shape):
            yield indices, batch
            indices, batch = [], []
        indices.append(index)
        batch.append(rgb)
    if batch:
        yield indices, batch


def _write_maps(out: Path, name: str, maps: Segments, size: Tuple[int, int], image: Path) -> None:
    if not maps.ids.shape == maps.semantics.shape == maps.confidence.shape == tuple(size):
        raise SegmenterError(f"{image}: the segmenter returned maps of another size than the image's {size}")
    for sub in _MAPS.values():
        (out / sub / name).parent.mkdir(parents=True, exist_ok=True)
    sf.write_label_map(out / "segments" / name, maps.ids)
    sf.write_label_map(out / "semantics" / name, maps.semantics)
    sf.write_confidence(out / "confidence" / name, maps.confidence)


def _set_classes(meta: Dict[str, Any], classes: sf.SceneClasses) -> None:
    """Writes the segmenter's classes, warning when ground truth in the scene uses other ones."""
    old = [str(name) for name in meta.get("semantic_classes", sf.DEFAULT_SEMANTIC_CLASSES)]
    has_ground_truth = any(sf.GT_SEMANTICS_KEY in f or sf.GT_INSTANCE_KEY in f for f in meta["frames"])
    if has_ground_truth and old != list(classes.names):
        CONSOLE.print(
            f"[yellow]cl-segment: the scene's ground truth uses the classes {escape(str(old))}, not the "
            "segmenter's; cl-eval's semantic metrics will compare different class lists[/yellow]"
        )
    meta["semantic_classes"] = list(classes.names)
    meta["thing_classes"] = list(classes.thing_ids)
    if classes.void_id is None:
        meta.pop("void_class", None)
    else:
        meta["void_class"] = classes.void_id


def _copy_atomically(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    entrypoint()
