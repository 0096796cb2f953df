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

**Hand corrections** (``clustering/corrections.py``) are kept in ``corrections.json`` beside the run's config.yml.
nerfstudio hands a pipeline neither the run's folder nor the config's path, so the pipeline learns the folder
from the trainer when training starts and keeps it in its checkpoints; every command that opens a run
(``ns-viewer``, ``ns-render``, ``cl-eval``, ``cl-export``) loads a checkpoint through ``load_pipeline``, which
then applies the corrections. A checkpoint written before the corrections existed has no folder: such a run
opens without corrections and the viewer's corrections are not saved (said in the console). The viewer's
controls (``viewer/controls.py``) only get the few callables they need from the pipeline.

nerfstudio 1.1.5's pipeline wraps the model with ``device_ids=[local_rank]``, which CPU modules reject; this
pipeline wraps it itself (no device ids on the CPU), so ranks on CPUs over gloo train too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type

import torch
import torch.distributed as dist
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.utils import comms
from nerfstudio.utils.rich_utils import CONSOLE
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from contrastive_lift_ns.clustering.corrections import FILE_NAME, ClusterSample, CorrectionError, Corrections, Split
from contrastive_lift_ns.data.datamanager import ContrastiveLiftDataManager, PixelSample
from contrastive_lift_ns.drawing.images import save_rgb
from contrastive_lift_ns.evaluation.scene_evaluation import evaluate
from contrastive_lift_ns.keys import Output
from contrastive_lift_ns.model import ContrastiveLiftModel, surface_points
from contrastive_lift_ns.viewer.controls import ClusteringControls, ControlActions


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
        self._sample: Optional[ClusterSample] = None  # the clustering's pixels rendered, for splits
        self.run_dir: Optional[Path] = None
        """The run's folder (config.yml's), where its corrections are kept; None before training has started."""
        model = self.model
        self.viewer_controls = ClusteringControls(
            ControlActions(
                clustering=model.uses_clustering,
                min_cluster_size=model.config.clustering.min_cluster_size or 0,
                fitted=lambda: model.clusters.fitted,
                recluster=lambda size: self.recluster(min_cluster_size=size),
                pick=self.object_at,
                isolate=lambda object_id: setattr(model, "isolated_id", object_id),
                merge=self.merge_objects,
                split=self.split_object,
                delete=self.delete_object,
                undo=self.undo_correction,
                objects=self.objects,
            )
        )

    def recluster(
        self,
        num_pixels: Optional[int] = None,
        seed: Optional[int] = None,
        min_cluster_size: Optional[int] = None,
        save_corrections: bool = True,
    ) -> Dict[str, Any]:
        """Clusters the embeddings of training pixels into objects (``ContrastiveLiftModel.fit_clusters``), and
        keeps the hand corrections that still make sense (``Corrections.rebase``).

        By default the same ``clustering.num_pixels`` pixels every time; ``num_pixels`` or ``seed`` draw others.
        ``min_cluster_size`` overrides the configured size for this clustering (the viewer's slider).
        ``save_corrections=False`` leaves the corrections file as it is (a command that only reads the run).
        """
        if self.world_size > 1:  # rank 0 clusters; every rank takes its result
            fitted = [self._fit(num_pixels, seed, min_cluster_size) if comms.is_main_process() else None, None]
            if comms.is_main_process():
                fitted[1] = self.model.clusters.get_extra_state()
            dist.broadcast_object_list(fitted, src=0)
            self.model.clusters.set_extra_state(fitted[1])
            stats = fitted[0]
        else:
            stats = self._fit(num_pixels, seed, min_cluster_size)
        self._sample = None
        corrections = self.model.corrections
        if len(corrections):
            with_splits = any(isinstance(o, Split) for o in corrections.operations)  # only splits are fitted again
            sample = self.cluster_sample() if with_splits else None
            for dropped in corrections.rebase(self.model.clusters.ids.tolist(), sample):
                CONSOLE.print(f"[yellow]After the re-clustering, {dropped}: left out of the corrections")
            if save_corrections:
                self._save_corrections()
        self.viewer_controls.refresh_objects()
        return stats

    def _fit(self, num_pixels: Optional[int], seed: Optional[int], min_cluster_size: Optional[int]) -> Dict[str, Any]:
        config = self.model.config.clustering
        if num_pixels is not None or seed is not None:
            sample = self.datamanager.training_pixels(num_pixels or config.num_pixels, seed or 0, config.segment_share)
        else:
            sample = self._default_pixels()
        rays = self.datamanager.train_ray_generator(sample.indices.to(self.device))
        return self.model.fit_clusters(rays, sample.segments, sample.indices[:, 0], min_cluster_size)

    # ---------------------------------------------------------------- hand corrections

    @property
    def corrections_path(self) -> Optional[Path]:
        """The run's corrections file, or None where the run's folder is unknown."""
        return None if self.run_dir is None else self.run_dir / FILE_NAME

    def get_extra_state(self) -> Dict[str, Any]:
        return {"run_dir": None if self.run_dir is None else str(self.run_dir)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.run_dir = None if state.get("run_dir") is None else Path(state["run_dir"])

    def load_pipeline(self, loaded_state: Dict[str, Any], step: int) -> None:
        super().load_pipeline(loaded_state, step)
        self.open_corrections()

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        base_dir = getattr(attributes.trainer, "base_dir", None)
        if base_dir is not None and Path(base_dir) != self.run_dir:
            self.run_dir = Path(base_dir)
            self.open_corrections()
        return super().get_training_callbacks(attributes)

    def open_corrections(self) -> None:
        """Reads the run's corrections file and applies those of its corrections that fit the loaded objects; a
        file that cannot be read, or corrections naming missing ids, are said in the console and left out."""
        path = self.corrections_path
        if path is None or not self.model.uses_clustering:
            return
        try:
            corrections = Corrections.load(path)
        except CorrectionError as err:
            CONSOLE.print(f"[bold yellow]{err}; the run opens without corrections (the viewer's next one replaces it)")
            corrections = Corrections()
        if len(corrections) and self.model.clusters.fitted:  # before the first clustering they wait for it
            for dropped in corrections.rebase(self.model.clusters.ids.tolist()):
                CONSOLE.print(f"[bold yellow]{path}: {dropped}; that correction is left out")
        self.model.corrections = corrections
        self._reserve_ids()
        if len(corrections):
            CONSOLE.print(f"Applying {len(corrections)} hand corrections from {path}")
        if self.model.clusters.fitted:
            self.viewer_controls.refresh_objects()

    def merge_objects(self, ids: Sequence[int]) -> str:
        """Merges objects into one (the smallest id); returns what was done, for the viewer."""
        merged = self.model.corrections.merge(ids, self.model.clusters.ids.tolist())
        return self._corrected(f"Merged {', '.join(map(str, merged.ids))} into {merged.into}")

    def split_object(self, object_id: int, parts: int) -> str:
        """Splits an object into ``parts`` by re-clustering its sampled pixels."""
        clusters = self.model.clusters
        split = self.model.corrections.split(
            object_id, parts, clusters.ids.tolist(), self.cluster_sample(), clusters.reserved_ids
        )
        return self._corrected(f"Split {object_id} into {', '.join(map(str, split.part_ids))}")

    def delete_object(self, object_id: int) -> str:
        """Makes an object no object (id 0)."""
        self.model.corrections.delete(object_id, self.model.clusters.ids.tolist())
        return self._corrected(f"Deleted {object_id}")

    def undo_correction(self) -> str:
        """Drops the last correction."""
        undone = self.model.corrections.undo()
        return self._corrected("Nothing to undo" if undone is None else f"Undid: {undone.row()['op']}")

    def objects(self) -> List[Tuple[int, int, float]]:
        """The corrected objects: (id, size in sampled pixels, confidence), by id."""
        clusters = self.model.clusters
        rows = {
            i: (s, c) for i, s, c in zip(clusters.ids.tolist(), clusters.sizes.tolist(), clusters.confidence.tolist())
        }
        table = self.model.corrections.table(rows)
        return [(i, *table[i]) for i in sorted(table)]

    def cluster_sample(self) -> ClusterSample:
        """The clustering's sampled pixels rendered (once per clustering, on the CPU), with their clustered ids."""
        if self._sample is None:
            pixels = self._default_pixels()
            rays = self.datamanager.train_ray_generator(pixels.indices.to(self.device))
            outputs = self.model.render_rays(rays)
            classes = outputs[Output.SEMANTIC_LOGITS].argmax(-1)
            positions = surface_points(rays, outputs)
            ids = self.model.clusters.assign(outputs[Output.EMBEDDING], classes, positions)
            self._sample = ClusterSample(
                *(ids.cpu(), outputs[Output.EMBEDDING].cpu(), classes.cpu(), positions.cpu()),
                *(pixels.segments.cpu(), pixels.indices[:, 0].cpu()),
            )
        return self._sample

    @torch.no_grad()
    def object_at(self, origin: Sequence[float], direction: Sequence[float]) -> int:
        """The (corrected) object id along a ray, e.g. a click in the viewer (0 if none)."""
        device = self.model.device
        ray = RayBundle(
            origins=torch.tensor([origin], dtype=torch.float32, device=device),
            directions=torch.nn.functional.normalize(torch.tensor([direction], dtype=torch.float32), dim=-1).to(
                device
            ),
            pixel_area=torch.full((1, 1), 1e-6, device=device),
            camera_indices=torch.zeros(1, 1, dtype=torch.long, device=device),
        )
        model = self.model
        outputs = model.render_rays(ray)
        images = model.label_images(
            outputs[Output.SEMANTIC_LOGITS], outputs[model.instance_output], surface_points(ray, outputs)
        )
        return int(images[Output.INSTANCE_ID].item()) if Output.INSTANCE_ID in images else 0

    def _corrected(self, done: str) -> str:
        self._reserve_ids()
        self._save_corrections()
        CONSOLE.print(done)
        return done

    def _reserve_ids(self) -> None:
        """The clustering never hands out the ids that splits gave."""
        clusters = self.model.clusters
        clusters.reserved_ids = max(clusters.reserved_ids, self.model.corrections.largest_id())

    def _save_corrections(self) -> None:
        if not comms.is_main_process():
            return
        if self.corrections_path is None:
            CONSOLE.print(
                "[yellow]The run's folder is unknown (its checkpoint is older than hand corrections), so the "
                "corrections are not saved"
            )
            return
        self.model.corrections.save(self.corrections_path)

    def _default_pixels(self) -> PixelSample:
        """The same ``clustering.num_pixels`` training pixels every time."""
        if self._cluster_pixels is None:
            config = self.model.config.clustering
            self._cluster_pixels = self.datamanager.training_pixels(config.num_pixels, 0, config.segment_share)
        return self._cluster_pixels

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
