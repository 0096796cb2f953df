"""nerfstudio's pipeline, wired for clustering and scene-level evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Type

from torch.cuda.amp.grad_scaler import GradScaler

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from contrastive_lift_ns.model import ContrastiveLiftModel


@dataclass
class ContrastiveLiftPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline whose model clusters pixels of the training views."""

    _target: Type = field(default_factory=lambda: ContrastiveLiftPipeline)
    """Target class to instantiate."""


class ContrastiveLiftPipeline(VanillaPipeline):
    """Hands the training cameras to the model, which samples their pixels for clustering."""

    model: ContrastiveLiftModel

    def __init__(
        self,
        config: ContrastiveLiftPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ) -> None:
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.model.set_training_cameras(self.datamanager.train_dataset.cameras)
