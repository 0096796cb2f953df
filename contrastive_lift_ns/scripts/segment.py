"""cl-segment: run a 2D segmenter on every image of a scene and add its maps to ``transforms.json``.

Example::

    ns-process-data images --data photos/ --output-dir scene/
    cl-segment --data scene/ --segmenter mask2former
    ns-train contrastive-lift --data scene/

The maps go to ``cl-segment-<segmenter>/{segments,semantics,confidence}/``, named after the images, with
``segments_path``, ``semantics_path`` and ``confidence_path`` per frame and the segmenter's ``semantic_classes``,
``thing_classes`` and ``void_class`` in ``transforms.json``. Where they go:

- **In place** (default): into the scene folder. A rerun with the same segmenter replaces that folder; nothing
  else in the scene is changed. The maps are written first; then the original ``transforms.json`` is copied to
  ``transforms.json.bak`` (unless a backup is already there: the first one, the file before any cl-segment run,
  is kept) and ``transforms.json`` is rewritten atomically. A read-only ``transforms.json`` (or folder) is refused
  before anything is segmented.
- **--output-dir DIR**: into a new scene in DIR, written atomically as a whole; the source scene is only read.
  Its ``transforms.json`` is the source's, with every file path rewritten to reach the source's files from DIR.

``--downscale-factor N`` segments at 1/N of the images' size and writes maps of that size, recorded as
``label_downscale_factor``. The images at 1/N are the scene's ``images_N/<file name>`` where they exist (nerfstudio's
convention, which ns-process-data follows), else the images resized here as ns-process-data resizes them. With
--output-dir, DIR also gets ``images_2/`` … ``images_N/``, so that nerfstudio's ``--downscale-factor`` finds them.

A failure at any point leaves ``transforms.json`` as it was, and a failure while segmenting leaves no maps behind.
"""

from __future__ import annotations

import copy
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

import numpy as np
import tyro
from PIL import Image
from rich.console import Console
from rich.markup import escape

from contrastive_lift_ns.atomic import atomic_copy, atomic_output_dir, atomic_write_json
from contrastive_lift_ns.console import progress_bar
from contrastive_lift_ns.data import scene_format as sf
from contrastive_lift_ns.scripts.cli import RunError, check_writable, run_command
from contrastive_lift_ns.segmenters import Segmenter, SegmenterError, Segments

CONSOLE = Console(width=120)
_MAPS = {sf.SEGMENTS_KEY: "segments", sf.SEMANTICS_KEY: "semantics", sf.CONFIDENCE_KEY: "confidence"}
# Files a transforms.json names (per frame, and at the top level), which a scene written elsewhere must still reach.
_FRAME_FILES = ("file_path", "mask_path", "depth_file_path", sf.GT_INSTANCE_KEY, sf.GT_SEMANTICS_KEY)
_SPLIT_FILES = ("train_filenames", "val_filenames", "test_filenames")


class SegmentError(ValueError):
    """A bad flag or scene; the message names the flag, frame or file."""


@dataclass
class SegmentConfig:
    """Run a 2D segmenter on every image listed in a scene's transforms.json and add its segment, semantic and
    confidence maps to it (the original is kept as transforms.json.bak), or write them into a new scene."""

    data: Path
    """Scene folder with a transforms.json (from ns-process-data or cl-make-scene), or the JSON file itself."""
    segmenter: Literal["mask2former", "sam", "felzenszwalb", "slic"] = "mask2former"
    """mask2former: panoptic with the model's classes (the paper's choice); sam: instances of one "object" class;
    felzenszwalb, slic: classical, no weights (fallbacks)."""
    output_dir: Optional[Path] = None
    """Write a new scene here (transforms.json reaching the original images, the maps, the downscaled images) and
    only read --data. It must be empty or absent unless --overwrite is given. Default: change the --data scene."""
    overwrite: bool = False
    """Replace a non-empty --output-dir."""
    downscale_factor: Literal[1, 2, 4, 8] = 1
    """Segment at 1/N of the images' size (the scene's images_N/ when it has them), and write maps of that size."""
    model: Optional[str] = None
    """Hugging Face Hub name or local folder of the weights (default: facebook/mask2former-swin-large-coco-panoptic
    for mask2former, facebook/sam-vit-huge for sam). Not for felzenszwalb or slic."""
    device: Optional[Literal["cpu", "cuda"]] = None
    """Where the model runs (default: cuda when there is a GPU)."""
    batch_size: int = 4
    """Images per forward pass (consecutive images of the same size)."""
    score_threshold: Optional[float] = None
    """Drop segments scoring below this, in [0, 1] (default: 0.8 on mask2former's class score, 0.88 on sam's
    predicted IoU). Not for felzenszwalb or slic."""
    points_per_side: Optional[int] = None
    """sam only: the grid of point prompts has this many points per image side (default: 32)."""


def segment(config: SegmentConfig, progress: bool = True) -> Path:
    """Segments every image of ``config.data`` and returns the transforms.json written: the scene's own, updated,
    or the new one in ``config.output_dir``.

    Raises SegmentError for bad flags, scene files or output folders and SegmenterError when the segmenter cannot
    be set up; then, as on any other failure, the source's transforms.json is unchanged.
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
    if config.downscale_factor > 1:
        _check_file_names(images, config.downscale_factor)
    if config.output_dir is None:
        _check_writable(transforms)
        _warn_without_downscaled_images(images, root, config.downscale_factor)
    else:
        _check_output_dir(config.output_dir, config.overwrite, [transforms, *images])
    segmenter = _load(config, device)
    folder = f"cl-segment-{config.segmenter}"
    if config.output_dir is None:
        with atomic_output_dir(root / folder, overwrite=True) as out:
            counts = _segment_all(config, segmenter, images, root, names, out, None, progress)
        _record(meta, names, folder, segmenter, config.downscale_factor)
        backup = transforms.with_name(transforms.name + ".bak")
        kept = backup.exists()
        if not kept:
            atomic_copy(transforms, backup)
        atomic_write_json(transforms, meta)
        note = f"kept the earlier backup {backup.name}" if kept else f"the original is now {backup.name}"
        where = f"maps in {root / folder}, {transforms} updated ({note})"
        written = transforms
    else:
        with atomic_output_dir(config.output_dir, overwrite=config.overwrite) as out:
            counts = _segment_all(config, segmenter, images, root, names, out / folder, out, progress)
            meta = _relocated(meta, root, config.output_dir)
            _record(meta, names, folder, segmenter, config.downscale_factor)
            atomic_write_json(out / "transforms.json", meta)
        where = f"a new scene in {config.output_dir}, {transforms} unchanged"
        written = config.output_dir / "transforms.json"
    if progress:
        CONSOLE.print(
            f"Segmented {len(images)} images in {time.perf_counter() - start:.1f} s "
            f"({statistics.median(counts):g} segments per image, median): {escape(where)}"
        )
    return written


def entrypoint() -> None:
    """Entry point of the ``cl-segment`` command."""
    config = tyro.cli(SegmentConfig)
    run_command("cl-segment", lambda: segment(config), (SegmentError, SegmenterError, RunError))


def _check(config: SegmentConfig) -> str:
    """Validates the flags; returns the device."""
    problems = []
    if config.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.downscale_factor not in (1, 2, 4, 8):
        problems.append(f"--downscale-factor must be 1, 2, 4 or 8, got {config.downscale_factor}")
    if config.score_threshold is not None and not 0.0 <= config.score_threshold <= 1.0:
        problems.append(f"--score-threshold must lie in [0, 1], got {config.score_threshold}")
    if config.points_per_side is not None and config.points_per_side < 1:
        problems.append(f"--points-per-side must be at least 1, got {config.points_per_side}")
    if config.overwrite and config.output_dir is None:
        problems.append("--overwrite applies only with --output-dir")
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


def _check_file_names(images: List[Path], factor: int) -> None:
    """nerfstudio finds a downscaled image by its file name alone (``images_N/<name>``), so names must differ."""
    seen: Dict[str, Path] = {}
    for path in images:
        if path.name in seen:
            raise SegmentError(
                f"--downscale-factor {factor}: {seen[path.name]} and {path} share the file name '{path.name}', but "
                f"nerfstudio finds downscaled images by file name alone (images_{factor}/<name>); rename one of them"
            )
        seen[path.name] = path


def _writable(path: Path) -> bool:
    """Whether we may write ``path``. Root may write anything, so for root a file or folder without any write
    permission counts as read-only: its owner made it so."""
    if not os.access(path, os.W_OK):
        return False
    return os.name != "posix" or os.geteuid() != 0 or bool(path.stat().st_mode & 0o222)


def _check_writable(transforms: Path) -> None:
    for path, what in ((transforms, "is read-only"), (transforms.parent, "is in a read-only folder")):
        if not _writable(path):
            raise SegmentError(
                f"{transforms} {what}, so cl-segment cannot add the maps to it; pass --output-dir DIR to write a "
                "new scene there instead"
            )


def _warn_without_downscaled_images(images: List[Path], root: Path, factor: int) -> None:
    missing = sum(not (root / f"images_{factor}" / path.name).is_file() for path in images) if factor > 1 else 0
    if missing:
        CONSOLE.print(
            f"[yellow]cl-segment: {escape(str(root / f'images_{factor}'))} lacks {missing} of the images, so they "
            f"are resized here; nerfstudio's --downscale-factor {factor} needs them there (--output-dir writes them)"
            "[/yellow]"
        )


def _check_output_dir(out: Path, overwrite: bool, sources: List[Path]) -> None:
    """Refuses an --output-dir that cannot be written, or whose replacement would delete the source scene."""
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SegmentError(f"--output-dir {out}: not empty; pass --overwrite to replace it")
    resolved = out.resolve()
    for source in sources:
        if source.resolve().is_relative_to(resolved):
            raise SegmentError(f"--output-dir {out}: holds {source} of the source scene; choose another folder")
    check_writable(out, "--output-dir", folder=True)


def _load(config: SegmentConfig, device: str) -> Segmenter:
    if config.segmenter == "mask2former":
        from contrastive_lift_ns.segmenters.mask2former import Mask2Former

        return Mask2Former(config.model, device, config.score_threshold)
    if config.segmenter == "sam":
        from contrastive_lift_ns.segmenters.sam import Sam

        return Sam(config.model, device, config.score_threshold, config.points_per_side)
    from contrastive_lift_ns.segmenters.classical import Felzenszwalb, Slic

    return Felzenszwalb() if config.segmenter == "felzenszwalb" else Slic()


def _segment_all(
    config: SegmentConfig,
    segmenter: Segmenter,
    images: List[Path],
    root: Path,
    names: List[str],
    maps: Path,
    copies: Optional[Path],
    progress: bool,
) -> List[int]:
    """Writes the maps of every image below ``maps`` (and, with ``copies``, the downscaled images below it);
    returns the number of segments in each image."""
    counts = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"Segmenting with {config.segmenter}", total=len(images))
        views = (_view(path, root, config.downscale_factor, copies) for path in images)
        for indices, batch in _batches(views, config.batch_size):
            for index, result in zip(indices, segmenter.segment(batch)):
                _write_maps(maps, names[index], result, batch[0].shape[:2], images[index])
                counts.append(int(np.count_nonzero(np.bincount(result.ids.ravel())[1:])))
            bar.advance(task, len(indices))
    return counts


def _view(image: Path, root: Path, factor: int, copies: Optional[Path]) -> np.ndarray:
    """The image as RGB at 1/factor of its size. The image at 1/k is ``images_k/<file name>`` in the scene when
    it is there, else the image resized; with ``copies``, it is written to ``copies/images_k/`` for every power of
    two k up to factor (all the sizes nerfstudio's --downscale-factor may ask for)."""
    view = original = None
    for scale in (2**i for i in range(1, factor.bit_length()) if copies is not None or 2**i == factor):
        existing = root / f"images_{scale}" / image.name
        target = None if copies is None else copies / f"images_{scale}" / image.name
        if target is not None:
            target.parent.mkdir(exist_ok=True)
        if existing.is_file():
            if target is not None:
                shutil.copyfile(existing, target)
            if scale == factor:
                view = _open(existing)
            continue
        if original is None:
            original = _open(image)
        # ns-process-data scales with ffmpeg's scale=iw/N:ih/N, which truncates the size and filters bicubically.
        scaled = original.resize((int(original.width / scale), int(original.height / scale)), Image.Resampling.BICUBIC)
        if target is not None:
            scaled.save(target, quality=95)  # JPEG: about ffmpeg's -q:v 2; other formats ignore it
        if scale == factor:
            view = scaled
    return np.asarray((_open(image) if view is None else view).convert("RGB"))


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as err:  # PIL raises many types for corrupt files
        raise SegmentError(f"{path}: unreadable image ({err})") from None
    return image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")


def _batches(views: Iterator[np.ndarray], batch_size: int) -> Iterator[Tuple[List[int], List[np.ndarray]]]:
    """Consecutive images, at most batch_size at a time and of one size per batch."""
    indices: List[int] = []
    batch: List[np.ndarray] = []
    for index, rgb in enumerate(views):
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


def _record(meta: Dict[str, Any], names: List[str], folder: str, segmenter: Segmenter, factor: int) -> None:
    """Adds the maps, the segmenter's classes and the maps' downscale factor to ``meta``."""
    for frame, name in zip(meta["frames"], names):
        frame.update({key: f"{folder}/{sub}/{name}" for key, sub in _MAPS.items()})
    _set_classes(meta, segmenter.classes)
    if factor > 1:
        meta[sf.LABEL_DOWNSCALE_KEY] = factor
    else:
        meta.pop(sf.LABEL_DOWNSCALE_KEY, None)


def _relocated(meta: Dict[str, Any], root: Path, out: Path) -> Dict[str, Any]:
    """A copy of ``meta`` for a transforms.json in ``out`` that names the same files as the one in ``root``."""
    base = out.resolve()

    def moved(name: str) -> str:
        path = root / name
        path = path.parent.resolve() / path.name  # the file's own name: nerfstudio's images_N lookup uses it
        try:
            return Path(os.path.relpath(path, base)).as_posix()
        except ValueError:  # on another drive (Windows): no relative path
            return str(path)

    meta = copy.deepcopy(meta)
    for frame in meta["frames"]:
        frame.update({key: moved(frame[key]) for key in _FRAME_FILES if key in frame})
    meta.update({key: [moved(name) for name in meta[key]] for key in _SPLIT_FILES if key in meta})
    if "ply_file_path" in meta:
        meta["ply_file_path"] = moved(meta["ply_file_path"])
    if "applied_transform" not in meta and (root / "colmap" / "sparse" / "0").exists():
        meta["applied_transform"] = sf.COLMAP_APPLIED_TRANSFORM  # the new scene has no colmap/ to imply it
    return meta


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


if __name__ == "__main__":
    entrypoint()
