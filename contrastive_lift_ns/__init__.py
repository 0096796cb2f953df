"""Contrastive Lift for nerfstudio: lift view-inconsistent 2D instance masks to one 3D instance field."""

import os
import shutil
from pathlib import Path

import numpy as np
import torch


def _allow_numpy_in_checkpoints() -> None:
    """nerfstudio checkpoints hold numpy scalars; torch >= 2.6 loads with weights_only=True and rejects them.

    Allowlisting these types keeps resume, ns-eval, ns-render and ns-viewer working without disabling the
    safe loader.
    """
    # numpy pickles its scalars through this function, named numpy.core.multiarray.scalar by numpy 1.x and
    # numpy._core.multiarray.scalar by 2.x; allow both names so checkpoints load across the two.
    scalar = np.float64(0).__reduce__()[0]
    scalar_names = [(scalar, f"{module}.multiarray.scalar") for module in ("numpy.core", "numpy._core")]
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    torch.serialization.add_safe_globals([*scalar_names, np.dtype, *dtype_classes])


def _put_ffmpeg_on_path() -> None:
    """``ns-render`` needs an ``ffmpeg`` on PATH; the imageio-ffmpeg dependency ships one under another name.

    Where no ffmpeg is installed, link it as ``ffmpeg`` in a cache folder and put that folder on this
    process's PATH (the plugin is imported before ns-render looks).
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


_allow_numpy_in_checkpoints()
_put_ffmpeg_on_path()
