"""The project's scene format: nerfstudio's ``transforms.json`` plus per-frame label maps.

Every part of the project reads and writes scenes through this module, so the keys, the accepted
file types and the error messages are defined once. See the README's "Scene format" section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

SEGMENTS_KEY = "segments_path"
SEMANTICS_KEY = "semantics_path"
CONFIDENCE_KEY = "confidence_path"
GT_INSTANCE_KEY = "gt_instance_path"
GT_SEMANTICS_KEY = "gt_semantics_path"
LABEL_DOWNSCALE_KEY = "label_downscale_factor"
# nerfstudio's dataparser assumes this applied_transform for a COLMAP scene whose transforms.json lacks the key.
COLMAP_APPLIED_TRANSFORM = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]]
DEFAULT_SEMANTIC_CLASSES = ("background", "object")

# PIL modes of single-channel integer images (8-bit, 16-bit little/big endian, 32-bit).
_INTEGER_PNG_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "1")


class SceneFormatError(ValueError):
    """A scene file that breaks the format; the message names the frame and the file."""


def _where(path: Path, frame: Optional[str]) -> str:
    return f"frame '{frame}': {path}" if frame is not None else str(path)


def _open_png(path: Path, frame: Optional[str]) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise SceneFormatError(f"{_where(path, frame)}: file not found") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise SceneFormatError(f"{_where(path, frame)}: unreadable image ({err})") from None
    return image


def _load_npy(path: Path, frame: Optional[str], mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise SceneFormatError(f"{_where(path, frame)}: file not found") from None
    except Exception as err:
        raise SceneFormatError(f"{_where(path, frame)}: unreadable .npy file ({err})") from None


def _load_npz_confidence(path: Path, frame: Optional[str]) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive["confidence"]  # read only this member: the archive also holds H×W×C probabilities
    except FileNotFoundError:
        raise SceneFormatError(f"{_where(path, frame)}: file not found") from None
    except KeyError:
        raise SceneFormatError(f"{_where(path, frame)}: .npz has no 'confidence' array") from None
    except Exception as err:
        raise SceneFormatError(f"{_where(path, frame)}: unreadable .npz file ({err})") from None


def _squeeze_channel(array: np.ndarray, path: Path, frame: Optional[str], what: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise SceneFormatError(
            f"{_where(path, frame)}: {what} must be a single-channel H×W map, got shape {tuple(array.shape)}"
        )
    return array


def read_label_map(path: Path, frame: Optional[str] = None, what: str = "label map") -> np.ndarray:
    """Reads an integer label map (single-channel 8/16-bit PNG or integer ``.npy``) as int64 H×W."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        array = _load_npy(path, frame)
        if array.dtype.kind not in "iub":
            raise SceneFormatError(
                f"{_where(path, frame)}: {what} must hold integer ids, got dtype {array.dtype} "
                "(write ids as an integer .npy or a single-channel 8/16-bit PNG)"
            )
        return _squeeze_channel(np.asarray(array), path, frame, what).astype(np.int64)
    image = _open_png(path, frame)
    if image.mode not in _INTEGER_PNG_MODES:
        raise SceneFormatError(
            f"{_where(path, frame)}: {what} must be a single-channel 8/16-bit integer image, got PIL mode "
            f"'{image.mode}'"
            + (" (an RGB or palette image is not an id map)" if image.mode in ("RGB", "RGBA", "P") else "")
        )
    return _squeeze_channel(np.asarray(image), path, frame, what).astype(np.int64)


def label_map_size(path: Path, frame: Optional[str] = None, what: str = "label map") -> Tuple[int, int]:
    """Checks a label map's type from its header only and returns its (height, width)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        array = _load_npy(path, frame, mmap=True)
        if array.dtype.kind not in "iub":
            raise SceneFormatError(f"{_where(path, frame)}: {what} must hold integer ids, got dtype {array.dtype}")
        return tuple(_squeeze_channel(array, path, frame, what).shape)  # type: ignore[return-value]
    try:
        with Image.open(path) as image:
            mode, (width, height) = image.mode, image.size
    except FileNotFoundError:
        raise SceneFormatError(f"{_where(path, frame)}: file not found") from None
    except Exception as err:
        raise SceneFormatError(f"{_where(path, frame)}: unreadable image ({err})") from None
    if mode not in _INTEGER_PNG_MODES:
        raise SceneFormatError(
            f"{_where(path, frame)}: {what} must be a single-channel 8/16-bit integer image, got PIL mode '{mode}'"
        )
    return height, width


def read_confidence(path: Path, frame: Optional[str] = None) -> np.ndarray:
    """Reads a confidence map in [0, 1]: a float ``.npy``, an ``.npz`` with a float ``confidence`` array (Panoptic
    Lifting's ``m2f_probabilities``), or an 8-bit PNG scaled by 1/255."""
    path = Path(path)
    if path.suffix.lower() in (".npy", ".npz"):
        array = _load_npy(path, frame) if path.suffix.lower() == ".npy" else _load_npz_confidence(path, frame)
        if array.dtype.kind != "f":
            raise SceneFormatError(
                f"{_where(path, frame)}: confidence {path.suffix} must be float, got dtype {array.dtype}"
            )
        array = _squeeze_channel(np.asarray(array, dtype=np.float32), path, frame, "confidence")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise SceneFormatError(f"{_where(path, frame)}: confidence values must lie in [0, 1]")
        return array
    image = _open_png(path, frame)
    if image.mode != "L":
        raise SceneFormatError(f"{_where(path, frame)}: confidence PNG must be 8-bit grey, got mode '{image.mode}'")
    return np.asarray(image, dtype=np.float32) / 255.0


def write_label_map(path: Path, ids: np.ndarray, sixteen_bit: bool = False) -> None:
    """Writes integer ids as a PNG (8-bit if they fit and ``sixteen_bit`` is off, else 16-bit) or, for a
    ``.npy`` path, as int32."""
    path = Path(path)
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iub" or ids.ndim != 2:
        raise ValueError(f"{path}: label maps are 2D integer arrays, got {ids.dtype} {ids.shape}")
    if path.suffix.lower() == ".npy":
        np.save(path, ids.astype(np.int32))
        return
    if ids.size and (ids.min() < 0 or ids.max() > 65535):
        raise ValueError(f"{path}: ids outside [0, 65535] do not fit a 16-bit PNG; use a .npy path")
    dtype = np.uint8 if not sixteen_bit and (not ids.size or ids.max() < 256) else np.uint16
    Image.fromarray(ids.astype(dtype)).save(path)


def write_confidence(path: Path, confidence: np.ndarray) -> None:
    """Writes confidence in [0, 1] as an 8-bit PNG (or a float16 ``.npy``)."""
    path = Path(path)
    confidence = np.clip(np.asarray(confidence, dtype=np.float32), 0.0, 1.0)
    if path.suffix.lower() == ".npy":
        np.save(path, confidence.astype(np.float16))
    else:
        Image.fromarray(np.round(confidence * 255).astype(np.uint8)).save(path)


@dataclass(frozen=True)
class SceneClasses:
    """The semantic classes of a scene and which of them are "things" (classes with instances)."""

    names: Tuple[str, ...] = DEFAULT_SEMANTIC_CLASSES
    thing_ids: Tuple[int, ...] = (1,)
    void_id: Optional[int] = None
    """A class that marks unannotated pixels (e.g. 0 in ScanNet-style ground truth); None: every class is real."""

    @classmethod
    def from_meta(cls, meta: Dict[str, Any], source: Path) -> "SceneClasses":
        names = tuple(meta.get("semantic_classes", DEFAULT_SEMANTIC_CLASSES))
        if len(names) < 2:
            raise SceneFormatError(f"{source}: 'semantic_classes' needs at least two names, got {list(names)}")
        void = meta.get("void_class")
        things = meta.get("thing_classes", [c for c in range(1, len(names)) if c != void])
        if not all(isinstance(t, int) and 0 <= t < len(names) for t in things):
            raise SceneFormatError(
                f"{source}: 'thing_classes' must be class ids in [0, {len(names) - 1}], got {things}"
            )
        if void is not None and (not isinstance(void, int) or not 0 <= void < len(names) or void in things):
            raise SceneFormatError(f"{source}: 'void_class' must be a non-thing class id, got {void}")
        return cls(names=names, thing_ids=tuple(sorted(set(things))), void_id=void)

    @property
    def is_thing(self) -> np.ndarray:
        """Boolean lookup table: ``is_thing[class_id]``."""
        table = np.zeros(len(self.names), dtype=bool)
        table[list(self.thing_ids)] = True
        return table


def load_transforms(data: Path) -> Tuple[Dict[str, Any], Path]:
    """Loads ``transforms.json`` from a scene folder (or an explicit json path) and checks the type of every key
    the project or nerfstudio reads, with errors that name the file and the key."""
    path = Path(data)
    path = path if path.suffix == ".json" else path / "transforms.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SceneFormatError(f"{path}: not found; a scene is a folder with a transforms.json") from None
    except IsADirectoryError:
        raise SceneFormatError(f"{path}: is a folder, not a transforms.json") from None
    if not text.strip():
        raise SceneFormatError(f"{path}: the file is empty")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SceneFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise SceneFormatError(f"{path}: must hold a JSON object, got {type(meta).__name__}")
    if not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise SceneFormatError(f"{path}: needs a non-empty 'frames' list (one entry per image)")
    for key, (types, what) in _TOP_LEVEL_TYPES.items():
        if key in meta and not _is(meta[key], types):
            raise SceneFormatError(f"{path}: '{key}' must be {what}, got {json.dumps(meta[key])[:80]}")
    for index, frame in enumerate(meta["frames"]):
        if not isinstance(frame, dict):
            raise SceneFormatError(f"{path}: frame {index} must be a JSON object, got {json.dumps(frame)[:80]}")
        for key, (types, what) in _FRAME_TYPES.items():
            if key in frame and not _is(frame[key], types):
                name = frame.get("file_path", index)
                raise SceneFormatError(
                    f"{path}: frame '{name}': '{key}' must be {what}, got {json.dumps(frame[key])[:80]}"
                )
        if "file_path" not in frame:
            raise SceneFormatError(f"{path}: frame {index} has no 'file_path'")
    check_cameras(meta, path)
    return meta, path


_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_POSITIVE = ("fl_x", "fl_y", "w", "h")


def check_cameras(meta: Dict[str, Any], path: Path) -> None:
    """Checks what nerfstudio's normalisation would spread to every camera, or divide by: each frame's pose is a
    finite 4×4 matrix, its intrinsics are finite (focal lengths and sizes positive), and there are at least two
    cameras, not all at one point (nerfstudio scales the poses by their spread)."""
    for key in _INTRINSICS:
        if key in meta:
            _check_intrinsic(meta[key], key, f"{path}")
    positions = []
    for frame in meta["frames"]:
        where = f"{path}: frame '{frame['file_path']}'"
        for key in _INTRINSICS:
            if key in frame:
                _check_intrinsic(frame[key], key, where)
        if "transform_matrix" not in frame:
            raise SceneFormatError(f"{where}: has no 'transform_matrix' (its camera-to-world pose)")
        try:
            pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            pose = np.empty(0)
        if pose.shape != (4, 4):
            raise SceneFormatError(f"{where}: 'transform_matrix' must be a 4×4 list of numbers")
        bad = np.argwhere(~np.isfinite(pose))
        if len(bad):
            row, column = bad[0]
            raise SceneFormatError(
                f"{where}: 'transform_matrix' holds {pose[row, column]} at row {row}, column {column}; every pose "
                "value must be a finite number"
            )
        positions.append(pose[:3, 3])
    if len(positions) < 2:
        raise SceneFormatError(
            f"{path}: has a single camera ('{meta['frames'][0]['file_path']}'); lifting needs views from at least "
            "two places (nerfstudio scales the scene by the cameras' spread)"
        )
    positions_array = np.stack(positions)
    if np.ptp(positions_array, axis=0).max() <= 1e-9 * (1.0 + np.abs(positions_array).max()):
        raise SceneFormatError(
            f"{path}: all {len(positions)} cameras stand at one point {positions_array[0].tolist()}; nerfstudio "
            "scales the scene by the cameras' spread, so they need views from at least two places (a tripod "
            "panorama has no parallax to reconstruct from)"
        )


def _check_intrinsic(value: Any, key: str, where: str) -> None:
    if not np.isfinite(value):
        raise SceneFormatError(f"{where}: '{key}' is {value}; camera intrinsics must be finite numbers")
    if key in _POSITIVE and value <= 0:
        raise SceneFormatError(f"{where}: '{key}' is {value}; it must be positive")


_NUMBER = (int, float)
_TOP_LEVEL_TYPES: Dict[str, Tuple[Any, str]] = {
    "semantic_classes": ((list, str), "a list of class names"),
    "thing_classes": ((list, int), "a list of class ids"),
    "void_class": ((int, None), "a class id or null"),
    "label_downscale_factor": ((int,), "a whole number ≥ 1"),
    "train_filenames": ((list, str), "a list of file_path strings"),
    "val_filenames": ((list, str), "a list of file_path strings"),
    "test_filenames": ((list, str), "a list of file_path strings"),
    **{key: (_NUMBER, "a number") for key in ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "k3", "k4", "p1", "p2")},
    "w": ((int, float), "a number of pixels"),
    "h": ((int, float), "a number of pixels"),
    "camera_model": ((str,), "a string"),
    "applied_scale": (_NUMBER, "a number"),
}
_FRAME_TYPES: Dict[str, Tuple[Any, str]] = {
    "file_path": ((str,), "a string"),
    "transform_matrix": ((list, list), "a 4×4 list of numbers"),
    **{
        key: ((str,), "a file path string")
        for key in (
            SEGMENTS_KEY,
            SEMANTICS_KEY,
            CONFIDENCE_KEY,
            GT_INSTANCE_KEY,
            GT_SEMANTICS_KEY,
            "mask_path",
            "depth_file_path",
        )
    },
    **{key: (_NUMBER, "a number") for key in ("fl_x", "fl_y", "cx", "cy", "w", "h")},
}


def _is(value: Any, types: Tuple[Any, ...]) -> bool:
    """Whether ``value`` has the JSON type ``types``: ``(list, T)`` is a list of T, ``None`` admits null; bools
    are not numbers."""
    if isinstance(value, bool):
        return False
    if types[0] is list:
        return isinstance(value, list) and all(not isinstance(v, bool) and isinstance(v, types[1]) for v in value)
    return (value is None and None in types) or isinstance(value, tuple(t for t in types if t is not None))


def label_downscale_factor(meta: Dict[str, Any], source: Path) -> int:
    """The scene's ``label_downscale_factor``: label maps are the images' size divided by it (default 1)."""
    factor = meta.get(LABEL_DOWNSCALE_KEY, 1)
    if factor < 1:
        raise SceneFormatError(f"{source}: '{LABEL_DOWNSCALE_KEY}' must be a whole number ≥ 1, got {factor}")
    return factor


def map_size(path: Path, frame: Optional[str], what: str) -> Tuple[int, int]:
    """The (height, width) of a label map or confidence map, checking its type from its header only (a
    confidence ``.npz`` is read)."""
    path = Path(path)
    if what != CONFIDENCE_KEY:
        return label_map_size(path, frame, what)
    if path.suffix.lower() == ".npz":
        return read_confidence(path, frame).shape  # type: ignore[return-value]
    if path.suffix.lower() == ".npy":
        return tuple(_squeeze_channel(_load_npy(path, frame, mmap=True), path, frame, what).shape)  # type: ignore
    return _open_png(path, frame).size[::-1]


def check_label_size(
    size: Sequence[int], image: Sequence[int], factor: int, path: Path, frame: Optional[str], what: str
) -> None:
    """Raises unless a map's (H, W) is its image's (H, W) divided by ``factor`` (rounded either way)."""
    expected = [side / factor for side in image[:2]]
    if any(abs(got - want) >= 1 for got, want in zip(size[:2], expected)):
        shown = f"{round(expected[1])}×{round(expected[0])}"
        if factor > 1:
            why = f"its image's {image[1]}×{image[0]} divided by the scene's {LABEL_DOWNSCALE_KEY} {factor}"
        else:
            why = "its image's size"
        raise SceneFormatError(f"{_where(path, frame)}: {what} is {size[1]}×{size[0]} (W×H) but must be {shown}, {why}")
