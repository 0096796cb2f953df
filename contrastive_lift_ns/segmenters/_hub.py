"""Loading Hugging Face weights with errors that tell an offline user what to do."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable, TypeVar

from contrastive_lift_ns.segmenters import SegmenterError

T = TypeVar("T")


def require_transformers(segmenter: str) -> ModuleType:
    """The transformers module, or a SegmenterError that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise SegmenterError(
            f"--segmenter {segmenter} needs transformers: pip install 'contrastive-lift-ns[segment]'"
        ) from None
    return transformers


def load_pretrained(name: str, segmenter: str, load: Callable[[str], T]) -> T:
    """``load(name)`` for a hub name or a local folder, with transformers' errors turned into SegmenterError."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        name = str(folder)
    elif folder.exists() or name.startswith((".", "/", "~")):
        raise SegmenterError(f"--model {name}: not a folder of {segmenter} weights")
    try:
        return load(name)
    except (OSError, ValueError) as err:  # transformers reports unreachable or absent weights as OSError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if folder.is_dir():
            raise SegmenterError(f"--model {name}: cannot load {segmenter} weights from it ({reason})") from None
        raise SegmenterError(
            f"cannot load the {segmenter} model '{name}': it is no local folder, and the Hugging Face Hub did not "
            f"provide it (offline, or no such model). Download it where there is network (e.g. `hf download {name} "
            f"--local-dir DIR`) and pass --model DIR. transformers: {reason}"
        ) from None
