"""Workarounds for nerfstudio 1.1.5 and recent torch, in one place, each with the condition for removing it.

None of them runs on import: nerfstudio imports every installed plugin at the start of every ``ns-*`` command,
and a command that does not use this plugin must see no change. ``ContrastiveLiftModel`` calls ``activate()``
when it is built, which every training, evaluation, render, viewer and ``cl-*`` command that uses a
contrastive-lift run does before it loads a checkpoint or renders a video.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

_active = False


def activate() -> None:
    """Applies the process-wide workarounds (once)."""
    global _active
    if not _active:
        allow_numpy_in_checkpoints()
        put_ffmpeg_on_path()
        _active = True


def allow_numpy_in_checkpoints() -> None:
    """nerfstudio checkpoints hold numpy scalars (the schedulers' learning rates); torch >= 2.6 loads with
    ``weights_only=True`` and rejects them, which breaks resume, ns-eval, ns-render and ns-viewer.

    Remove when nerfstudio loads its checkpoints with ``weights_only=False`` or saves no numpy scalars.
    """
    # numpy pickles its scalars through this function, named numpy.core.multiarray.scalar by numpy 1.x and
    # numpy._core.multiarray.scalar by 2.x; allow both names so checkpoints load across the two.
    scalar = np.float64(0).__reduce__()[0]
    scalar_names = [(scalar, f"{module}.multiarray.scalar") for module in ("numpy.core", "numpy._core")]
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    torch.serialization.add_safe_globals([*scalar_names, np.dtype, *dtype_classes])


def put_ffmpeg_on_path() -> None:
    """``ns-render`` needs an ``ffmpeg`` on PATH; the imageio-ffmpeg dependency ships one under another name.

    Where no ffmpeg is installed, it is linked as ``ffmpeg`` in a cache folder put on this process's PATH.
    Remove when nerfstudio finds ffmpeg through imageio-ffmpeg, or when a system ffmpeg can be assumed.
    """
    if shutil.which("ffmpeg") is not None:
        return
    try:
        import imageio_ffmpeg

        binary = Path(imageio_ffmpeg.get_ffmpeg_exe())
        folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "contrastive-lift-ns" / "bin"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "ffmpeg"
        if not link.exists():
            link.unlink(missing_ok=True)  # a dangling link from an older imageio-ffmpeg
            link.symlink_to(binary)
    except (ImportError, OSError, RuntimeError):
        return  # ns-render then says ffmpeg is missing, as it would without this plugin
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


class _NoLPIPS(nn.Module):
    """Stands in for torchmetrics' LPIPS, which downloads AlexNet weights when built."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, *args) -> Tensor:
        return torch.tensor(float("nan"))


@contextmanager
def without_lpips() -> Iterator[None]:
    """nerfacto builds torchmetrics' LPIPS in ``populate_modules``, which downloads AlexNet weights; building a
    model must work offline, so LPIPS (an evaluation metric only) is replaced while nerfacto is built.

    Remove when nerfacto builds LPIPS lazily, or when its weights ship with torchmetrics.
    """
    import torchmetrics.image.lpip as lpip

    original = lpip.LearnedPerceptualImagePatchSimilarity
    lpip.LearnedPerceptualImagePatchSimilarity = _NoLPIPS
    try:
        yield
    finally:
        lpip.LearnedPerceptualImagePatchSimilarity = original
