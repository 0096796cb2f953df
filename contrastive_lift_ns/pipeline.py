"""nerfstudio's pipeline, wired for clustering, scene-level evaluation and several processes.

The pipeline joins the data side and the model for the two things that need both: clustering (the data manager
samples pixels of the training views with their 2D segments, the model renders and fits them) and the
scene-level metrics of ``ns-eval`` (PQ^scene needs every test view at once).

**Several processes** (``ns-train ... --machine.num-devices N``, nerfstudio's launcher over torch.distributed):

- Each rank draws its own batches: nerfstudio seeds each rank differently, so the uniform rays and the
  ``images_per_batch × rays_per_image`` instance rays come from other images on every rank, and the per-image
  layout of the instance rays holds on each rank. A step trains on N times the rays.
- The model is wrapped in DistributedDataParallel, which averages the gradients of every trained field (the
  scene's, the semantic field and the fast instance field) across ranks after each backward pass, as nerfstudio
  does for nerfacto. The ranks start from rank 0's weights, so the fields stay identical on every rank.
- The slow field is an EMA of the fast one, updated on every rank after each step from the same fast weights,
  so it stays identical on every rank too (no communication needed).
- Clustering runs on rank 0 alone; its centroids, classes, ids and chosen sizes are broadcast, so every rank
  renders the same ids and every checkpoint holds them.
- Only rank 0 writes checkpoints (nerfstudio's trainer) and shows the viewer; a run resumes from them.

nerfstudio 1.1.5's pipeline wraps the model with ``device_ids=[local_rank]``, which CPU modules reject; this
pipeline wraps it itself (no device ids on the CPU), so ranks on CPUs over gloo train too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Type

import torch
import torch.distributed as dist
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import comms
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from contrastive_lift_ns.data.datamanager import ContrastiveLiftDataManager, PixelSample
from contrastive_lift_ns.drawing.images import save_rgb
from contrastive_lift_ns.evaluation.scene_evaluation import evaluate
from contrastive_lift_ns.keys import Output
from contrastive_lift_ns.model import ContrastiveLiftModel
from contrastive_lift_ns.viewer.controls import ClusteringControls


@dataclass
class ContrastiveLiftPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline that clusters the model's embeddings into objects and scores whole scenes."""

    _target: Type = field(default_factory=lambda: ContrastiveLiftPipeline)
    """Target class to instantiate."""


class ContrastiveLiftPipeline(VanillaPipeline):
    """Clusters pixels of the training views into objects, and adds PQ^scene to ``ns-eval``."""

    datamanager: ContrastiveLiftDataManager
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
        super().__init__(config, device, test_mode, 1, local_rank, grad_scaler)  # wrapped below instead
        self.world_size = world_size
        if world_size > 1:
            on_gpu = torch.device(device).type == "cuda"
            self._model = DDP(self._model, device_ids=[local_rank] if on_gpu else None, find_unused_parameters=True)
            dist.barrier()
        self._cluster_pixels: Optional[PixelSample] = None
        self.viewer_controls = ClusteringControls(self)

    def recluster(
        self, num_pixels: Optional[int] = None, seed: Optional[int] = None, min_cluster_size: Optional[int] = None
    ) -> Dict[str, Any]:
        """Clusters the embeddings of training pixels into objects (``ContrastiveLiftModel.fit_clusters``).

        By default the same ``clustering.num_pixels`` pixels every time; ``num_pixels`` or ``seed`` draw others.
        ``min_cluster_size`` overrides the configured size for this clustering (the viewer's slider).
        """
        if self.world_size > 1:  # rank 0 clusters; every rank takes its result
            fitted = [self._fit(num_pixels, seed, min_cluster_size) if comms.is_main_process() else None, None]
            if comms.is_main_process():
                fitted[1] = self.model.clusters.get_extra_state()
            dist.broadcast_object_list(fitted, src=0)
            self.model.clusters.set_extra_state(fitted[1])
            return fitted[0]
        return self._fit(num_pixels, seed, min_cluster_size)

    def _fit(self, num_pixels: Optional[int], seed: Optional[int], min_cluster_size: Optional[int]) -> Dict[str, Any]:
        config = self.model.config.clustering
        if num_pixels is not None or seed is not None:
            sample = self.datamanager.training_pixels(num_pixels or config.num_pixels, seed or 0, config.segment_share)
        else:
            if self._cluster_pixels is None:
                self._cluster_pixels = self.datamanager.training_pixels(config.num_pixels, 0, config.segment_share)
            sample = self._cluster_pixels
        rays = self.datamanager.train_ray_generator(sample.indices.to(self.device))
        return self.model.fit_clusters(rays, sample.segments, sample.indices[:, 0], min_cluster_size)

    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ) -> Dict[str, float]:
        def save(index: int, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> None:
            for key in ("rgb", Output.SEMANTICS, Output.INSTANCE):
                if key in outputs:
                    save_rgb(output_path / f"eval_{index:04d}_{key}.png", outputs[key])

        if output_path is not None:
            output_path.mkdir(parents=True, exist_ok=True)
        self.eval()
        metrics = evaluate(self, on_view=save if output_path is not None else None, with_std=get_std)
        self.train()
        return {key: value for key, value in metrics.items() if isinstance(value, (int, float))}  # for its writers
