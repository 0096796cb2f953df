"""Contrastive Lift for nerfstudio: lift view-inconsistent 2D instance masks to one 3D instance field."""

import numpy as np
import torch


def _allow_numpy_in_checkpoints() -> None:
    """nerfstudio checkpoints hold numpy scalars; torch >= 2.6 loads with weights_only=True and rejects them.

    Allowlisting these types keeps resume, ns-eval, ns-render and ns-viewer working without disabling the
    safe loader.
    """
    core = getattr(np, "_core", None) or np.core  # numpy 2.x / 1.x
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    torch.serialization.add_safe_globals([core.multiarray.scalar, np.dtype, *dtype_classes])


_allow_numpy_in_checkpoints()
