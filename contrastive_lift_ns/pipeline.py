"""nerfstudio's pipeline, wired for clustering and scene-level evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional, Type

import torch
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from torch.cuda.amp.grad_scaler import GradScaler

from contrastive_lift_ns.evaluation.scene_evaluation import evaluate
from contrastive_lift_ns.model import ContrastiveLiftModel
from contrastive_lift_ns.viewer.images import save_rgb


@dataclass
class ContrastiveLiftPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline whose model clusters pixels of the training views."""

    _target: Type = field(default_factory=lambda: ContrastiveLiftPipeline)
    """Target class to instantiate."""


class ContrastiveLiftPipeline(VanillaPipeline):
    """Hands the training views to the model, which samples their pixels for clustering, and adds the
    scene-level metrics (PQ^scene needs every view at once) to ``ns-eval``."""

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
        self.model.set_training_views(self.datamanager.train_dataset)

    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ) -> Dict[str, float]:
        def save(index: int, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> None:
            for key in ("rgb", "semantics", "instance"):
                if key in outputs:
                    save_rgb(output_path / f"eval_{index:04d}_{key}.png", outputs[key])

        if output_path is not None:
            output_path.mkdir(parents=True, exist_ok=True)
        self.eval()
        metrics = evaluate(self, on_view=save if output_path is not None else None, with_std=get_std)
        self.train()
        return metrics
