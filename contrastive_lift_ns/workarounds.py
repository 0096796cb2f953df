"""Workarounds for nerfstudio 1.1.5 and recent torch, in one place, each with the condition for removing it.

None of them runs on import: nerfstudio imports every installed plugin at the start of every ``ns-*`` command,
and a command that does not use this plugin must see no change. ``ContrastiveLiftModel`` calls ``activate()``
when it is built, which every training, evaluation, render, viewer and ``cl-*`` command that uses a
contrastive-lift run does before it loads a checkpoint or renders a video; from then on the known harmless
upstream warnings (``HARMLESS_UPSTREAM_WARNINGS``) are hidden. The data manager sizes nerfstudio's image loaders
to the machine (``loader_workers``) when it sets them up.
"""

from __future__ import annotations

import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

_active = False


def activate() -> None:
    """Applies the process-wide workarounds (once; the warning filters every time, since code such as pytest
    restores the filters it found)."""
    global _active
    if not _active:
        allow_numpy_in_checkpoints()
        put_ffmpeg_on_path()
        _active = True
    quiet_upstream_warnings()


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


HARMLESS_UPSTREAM_WARNINGS = (
    # nerfstudio's cameras.py indexes tensors with a list of index tensors; torch still reads it as a tuple (the
    # meaning nerfstudio wants) and warns that it may not one day. Remove when nerfstudio indexes with tuples.
    (UserWarning, r"Using a non-tuple sequence for multidimensional indexing", r"nerfstudio\.cameras\.cameras"),
    # The methods ask for mixed precision, for GPUs; on a CPU nerfstudio turns it off and torch's scaler disables
    # itself. nerfstudio builds the scaler through the old torch.cuda.amp name. Remove when nerfstudio builds the
    # scaler only where it is used, through torch.amp.
    (UserWarning, r"torch\.cuda\.amp\.GradScaler is enabled, but CUDA is not available", r"torch\.(cuda\.)?amp\."),
    (FutureWarning, r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"nerfstudio\.engine\.trainer"),
    # nerfstudio steps an optimizer only when its parameters have gradients, and every scheduler every step: the
    # label fields get none before their losses start, while their rates are held constant until then
    # (trainer.fit_schedules), so no value of a schedule is skipped. Remove when nerfstudio steps them together.
    (
        UserWarning,
        r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`",
        r"nerfstudio\.engine\.optimizers",
    ),
    # nerfstudio's writer logs the loss tensors with float(), which is the value it means to log. Remove when it
    # detaches them.
    (UserWarning, r"Converting a tensor with requires_grad=True to a scalar", r"nerfstudio\.utils\.writer"),
    # ns-render's interpolated path copies its pose tensors with torch.tensor(); they carry no gradient, so the
    # copy is what detach().clone() would give. Remove when nerfstudio builds them with torch.stack.
    (UserWarning, r"To copy construct from a tensor", r"nerfstudio\.cameras\.camera_utils"),
)
"""(category, message, module) of the upstream warnings that are known and harmless here; each filter matches
the start of the message and the module the warning is reported from, so the same words from elsewhere show."""


def quiet_upstream_warnings() -> None:
    """Hides ``HARMLESS_UPSTREAM_WARNINGS``; every other warning, this plugin's included, shows as before."""
    for category, message, module in HARMLESS_UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


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


def machine_workers(world_size: int = 1) -> int:
    """Image-loading workers for one of ``world_size`` training processes: an equal share of the CPU cores this
    process may run on, at most nerfstudio's 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cores // max(1, world_size))


@contextmanager
def loader_workers(count: Optional[int]) -> Iterator[None]:
    """nerfstudio 1.1.5's data manager gives its image loaders 4 workers per process (``world_size * 4``), more
    than a small machine has, and torch warns that the DataLoader may freeze. nerfstudio's cached loader never
    starts those workers: the count only sizes the threads that read the images. While the data manager sets up
    its loaders, this builds them with ``count`` workers (None: nerfstudio's number).

    Remove when nerfstudio sizes its loaders to the machine or takes the number from its config.
    """
    import nerfstudio.data.datamanagers.base_datamanager as base

    original = base.CacheDataloader
    if count is not None:
        base.CacheDataloader = lambda *args, **kwargs: original(*args, **{**kwargs, "num_workers": count})
    try:
        yield
    finally:
        base.CacheDataloader = original
