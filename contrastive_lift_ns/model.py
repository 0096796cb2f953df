"""Contrastive Lift: nerfacto plus a semantic field and an instance embedding field (slow-fast contrastive).

The scene (density, colour, proposal networks) is nerfacto's, trained by the RGB loss alone. The label fields
read detached sample positions and are rendered with detached weights, so no semantic or instance gradient
reaches the geometry. They are evaluated at only ``label_samples_per_ray`` samples per ray, placed at the
quantiles of the ray's weight distribution, each carrying an equal share of the ray's accumulation: the
proposal sampler spreads a surface's weight over many nearby samples, so a few quantiles render labels within
about 1 % of the full sum at a fraction of its cost (the heaviest few samples would miss a fifth of it).

Losses follow a schedule: RGB only at first, then the semantic cross-entropy, then the instance loss:
``slow-fast`` (eq. 4 + eq. 5, the paper's method), ``vanilla`` (eq. 3) or ``linear-assignment`` (Panoptic
Lifting's baseline). Embeddings become object ids by clustering (``InstanceClusters``), which is cached in
the model, refreshed while training and saved with the checkpoint.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.spatial_distortions import SceneContraction
from nerfstudio.model_components.losses import scale_gradients_by_distance_squared
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from contrastive_lift_ns.clustering.instance_clusters import ClusteringConfig, InstanceClusters
from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.pixel_sampler import random_pixels
from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.fields.label_field import LabelField, LabelFieldConfig
from contrastive_lift_ns.fields.slow_field import SlowField
from contrastive_lift_ns.losses.concentration import concentration_loss
from contrastive_lift_ns.losses.contrastive import slow_fast_contrastive_loss, vanilla_contrastive_loss
from contrastive_lift_ns.losses.linear_assignment import linear_assignment_loss
from contrastive_lift_ns.viewer.palette import embedding_colours, id_colours

InstanceLoss = Literal["slow-fast", "vanilla", "linear-assignment"]
_INSTANCE_MODULES = ("instance_field.", "slow_field.", "clusters.")


@dataclass
class ContrastiveLiftModelConfig(NerfactoModelConfig):
    """nerfacto plus semantic and instance label fields."""

    _target: Type = field(default_factory=lambda: ContrastiveLiftModel)
    """Target class to instantiate."""
    instance_loss: InstanceLoss = "slow-fast"
    """slow-fast: eq. 4 + concentration (eq. 5); vanilla: eq. 3; linear-assignment: Panoptic Lifting."""
    embedding_dim: int = 3
    """D, the instance embedding size (the paper uses 3)."""
    slow_field_momentum: float = 0.9
    """EMA momentum of the slow field: slow ← m·slow + (1 − m)·fast after each step."""
    max_instances: int = 64
    """linear-assignment only: the fixed number of instance logits (an upper bound on objects)."""
    instance_field: LabelFieldConfig = field(default_factory=LabelFieldConfig)
    """Hash grid and MLP of the instance field (the slow field copies it)."""
    semantic_field: LabelFieldConfig = field(
        default_factory=lambda: LabelFieldConfig(num_levels=8, max_res=256, log2_hashmap_size=15)
    )
    """Hash grid and MLP of the semantic field."""
    label_samples_per_ray: int = 8
    """The label fields are evaluated at this many samples per ray, at the quantiles of its weights."""
    semantic_loss_mult: float = 0.1
    """Weight of the confidence-weighted semantic cross-entropy (the authors' 0.1)."""
    contrastive_temperature: float = 1.0
    """Divides the contrastive similarities before the softmax (1: the authors' code)."""
    instance_loss_mult: float = 1.0
    """Weight of the contrastive (or linear-assignment) loss."""
    concentration_loss_mult: float = 1.0
    """Weight of the concentration loss (slow-fast only)."""
    semantic_loss_start_step: int = 1000
    """Step at which the semantic loss starts (RGB only before)."""
    instance_loss_start_step: int = 3000
    """Step at which the instance loss starts; geometry should be reasonable by then."""
    freeze_scene: bool = False
    """Train the instance field only: geometry, colour and semantics stay fixed (load them with
    scene_checkpoint). This is the paper's protocol for comparing instance losses on one scene."""
    scene_checkpoint: Optional[Path] = None
    """A nerfstudio checkpoint of this model whose scene and semantic weights are loaded at start-up."""
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    """How embeddings are clustered into objects."""


class ContrastiveLiftModel(NerfactoModel):
    """nerfacto with semantic and instance fields rendered on frozen geometry."""

    config: ContrastiveLiftModelConfig

    def populate_modules(self) -> None:
        if self.config.predict_normals:
            raise ValueError("contrastive-lift does not support --pipeline.model.predict-normals")
        with without_lpips():
            super().populate_modules()
        self.scene_classes: SceneClasses = self.kwargs["metadata"]["scene_classes"]
        self.step = 0
        contraction = None if self.config.disable_scene_contraction else SceneContraction(order=float("inf"))

        def label_field(config: LabelFieldConfig, out_dim: int) -> LabelField:
            return config.setup(
                out_dim=out_dim,
                aabb=self.scene_box.aabb,
                spatial_distortion=contraction,
                implementation=self.config.implementation,
            )

        self.semantic_field = label_field(self.config.semantic_field, len(self.scene_classes.names))
        linear = self.config.instance_loss == "linear-assignment"
        out_dim = self.config.max_instances if linear else self.config.embedding_dim
        self.instance_field = label_field(self.config.instance_field, out_dim)
        self.slow_field = (
            SlowField(self.instance_field, self.config.slow_field_momentum)
            if self.config.instance_loss == "slow-fast"
            else None
        )
        self.clusters: InstanceClusters = self.config.clustering.setup(thing_classes=self.scene_classes.thing_ids)
        self.training_views: Optional[ContrastiveLiftDataset] = None
        self._cluster_pixels: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self.isolated_id = 0  # the viewer's selected object; 0 shows all

        from contrastive_lift_ns.viewer.controls import ClusteringControls  # the viewer imports the model

        self.viewer_controls = ClusteringControls(self)
        if self.config.scene_checkpoint is not None:
            self._load_scene(self.config.scene_checkpoint)

    # ---------------------------------------------------------------- training set-up

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        groups = {"instance_field": list(self.instance_field.parameters())}
        if not self.config.freeze_scene:
            groups.update(super().get_param_groups())
            groups["semantic_field"] = list(self.semantic_field.parameters())
        return groups

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(attributes)
        trainer = attributes.trainer
        last_step = None
        if trainer is not None:
            last_step = getattr(trainer, "_start_step", 0) + trainer.config.max_num_iterations - 1

        def set_step(step: int) -> None:
            self.step = step

        def after_step(step: int) -> None:
            if step < self.config.instance_loss_start_step:
                return
            if self.slow_field is not None:
                self.slow_field.update(self.instance_field)
            every = self.config.clustering.recluster_every
            since = step - self.config.instance_loss_start_step
            if self.uses_clustering and (step == last_step or (every > 0 and since > 0 and since % every == 0)):
                self.recluster()

        callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_step))
        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_step))
        return callbacks

    def update_to_step(self, step: int) -> None:
        super().update_to_step(step)
        self.step = step

    @property
    def uses_clustering(self) -> bool:
        return self.config.instance_loss != "linear-assignment"

    def _load_scene(self, checkpoint: Path) -> None:
        """Loads everything but the instance modules from a checkpoint, and insists that all of it is there."""
        state = torch.load(checkpoint, map_location="cpu")["pipeline"]
        state = {k[len("_model.") :]: v for k, v in state.items() if k.startswith("_model.")}
        scene = {k: v for k, v in state.items() if not k.startswith(_INSTANCE_MODULES)}
        missing, _ = self.load_state_dict(scene, strict=False)
        missing = [k for k in missing if not k.startswith(_INSTANCE_MODULES)]
        if missing:
            raise ValueError(
                f"{checkpoint} lacks {len(missing)} scene weights (e.g. {missing[0]}); it must come from this model "
                "with the same sizes and the same --pipeline.model.implementation"
            )

    # ---------------------------------------------------------------- rendering

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Any]:
        with torch.no_grad() if self.config.freeze_scene else nullcontext():
            outputs, ray_samples, weights = self._render_scene(ray_bundle)
        # no_grad inside: label losses never reach the geometry through these positions or weights
        positions, label_weights = quantile_samples(
            ray_samples.frustums.get_positions(), weights, self.config.label_samples_per_ray
        )

        def render(field: nn.Module, take: slice = slice(None)) -> Tensor:
            return (label_weights[take] * field(positions[take])).sum(-2)

        training = self.training
        if not training or (self.step >= self.config.semantic_loss_start_step and not self.config.freeze_scene):
            outputs["semantic_logits"] = render(self.semantic_field)
        if not training:
            outputs["instance_values"] = render(self.instance_field)
        elif self.step >= self.config.instance_loss_start_step:
            if self.slow_field is None:
                outputs["instance_values"] = render(self.instance_field)
            else:  # each ray is rendered by one field only: even rays fast, odd rays slow
                outputs["fast_embedding"] = render(self.instance_field, slice(0, None, 2))
                with torch.no_grad():
                    outputs["slow_embedding"] = render(self.slow_field, slice(1, None, 2))
        return outputs

    def _render_scene(self, ray_bundle: RayBundle) -> Tuple[Dict[str, Any], RaySamples, Tensor]:
        """nerfacto's scene rendering, returning the final samples and weights for the label fields."""
        if self.training:
            self.camera_optimizer.apply_to_raybundle(ray_bundle)
        ray_samples, weights_list, ray_samples_list = self.proposal_sampler(ray_bundle, density_fns=self.density_fns)
        field_outputs = self.field.forward(ray_samples)
        if self.config.use_gradient_scaling:
            field_outputs = scale_gradients_by_distance_squared(field_outputs, ray_samples)
        weights = ray_samples.get_weights(field_outputs[FieldHeadNames.DENSITY])
        outputs: Dict[str, Any] = {
            "rgb": self.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights),
            "accumulation": self.renderer_accumulation(weights=weights),
            "depth": self.renderer_depth(weights=weights.detach(), ray_samples=ray_samples),
            "expected_depth": self.renderer_expected_depth(weights=weights, ray_samples=ray_samples),
        }
        for i, (prop_weights, prop_samples) in enumerate(zip(weights_list, ray_samples_list)):
            outputs[f"prop_depth_{i}"] = self.renderer_depth(weights=prop_weights, ray_samples=prop_samples)
        if self.training:  # the proposal and distortion losses need every level
            outputs["weights_list"] = weights_list + [weights]
            outputs["ray_samples_list"] = ray_samples_list + [ray_samples]
        return outputs, ray_samples, weights

    @torch.no_grad()
    def get_outputs_for_camera_ray_bundle(self, camera_ray_bundle: RayBundle) -> Dict[str, Tensor]:
        outputs = super().get_outputs_for_camera_ray_bundle(camera_ray_bundle)
        outputs.update(self.segment(outputs.pop("semantic_logits"), outputs.pop("instance_values")))
        return outputs

    def segment(self, semantic_logits: Tensor, instance_values: Tensor) -> Dict[str, Tensor]:
        """Raw label renders → images: ``semantic_class`` and ``instance_id`` (float ids, 1 channel), their
        palette colours ``semantics`` and ``instance``, and ``instance_embedding`` colours.

        ``instance`` appears once the model has been clustered (linear-assignment needs no clustering).
        """
        classes = semantic_logits.argmax(-1)
        thing = torch.as_tensor(self.scene_classes.is_thing, device=classes.device)[classes]
        images = {"semantic_class": classes[..., None].float(), "semantics": id_colours(classes)}
        if self.uses_clustering:
            images["instance_embedding"] = embedding_colours(instance_values)
            if not self.clusters.fitted:
                return images
            ids = self.clusters.assign(instance_values, classes)
        else:
            ids = torch.where(thing, instance_values.argmax(-1) + 1, torch.zeros_like(classes))
        images["instance_id"] = ids[..., None].float()
        colours = id_colours(ids)
        if self.isolated_id:
            dimmed = 0.25 * colours.mean(-1, keepdim=True).expand_as(colours)
            colours = torch.where((ids == self.isolated_id)[..., None], colours, dimmed)
        images["instance"] = colours
        return images

    # ---------------------------------------------------------------- clustering

    def set_training_views(self, dataset: ContrastiveLiftDataset) -> None:
        """The views whose pixels are clustered (set by the pipeline)."""
        self.training_views = dataset
        self._cluster_pixels = None

    def _sample_pixels(self, count: int, seed: int) -> Tuple[Tensor, Tensor, Tensor]:
        """(view index, (y, x) pixel centre, 2D segment id) of ``count`` random training pixels."""
        views, yx = random_pixels(self.training_views.cameras, count, seed)
        segments = torch.zeros(count, dtype=torch.long)
        for view in views.unique().tolist():  # one label map in memory at a time
            here = views == view
            pixel = yx[here].long()
            segments[here] = self.training_views.segments_of(view)[pixel[:, 0], pixel[:, 1]]
        return views, yx, segments

    @torch.no_grad()
    def recluster(self, num_pixels: Optional[int] = None, seed: Optional[int] = None) -> Dict[str, Any]:
        """Renders pixels sampled from the training views and re-fits the cluster centroids.

        By default the same ``clustering.num_pixels`` pixels every time (sampled once, with their 2D segments);
        ``num_pixels`` or ``seed`` draw a new sample.
        """
        if not self.uses_clustering:
            raise ValueError("linear-assignment-lift predicts instance ids directly; it has nothing to cluster")
        if self.training_views is None:
            raise RuntimeError("no training views to sample pixels from (the pipeline sets them)")
        start = time.perf_counter()
        if num_pixels is not None or seed is not None:
            sample = self._sample_pixels(num_pixels or self.config.clustering.num_pixels, seed or 0)
        else:
            if self._cluster_pixels is None:
                self._cluster_pixels = self._sample_pixels(self.config.clustering.num_pixels, 0)
            sample = self._cluster_pixels
        views, yx, segments = sample
        cameras = self.training_views.cameras.to(self.device)
        rays = cameras.generate_rays(camera_indices=views[:, None].to(self.device), coords=yx.to(self.device))
        was_training = self.training
        self.eval()
        try:
            chunk = self.config.eval_num_rays_per_chunk
            outputs = [self.forward(rays[i : i + chunk]) for i in range(0, len(views), chunk)]
        finally:
            self.train(was_training)
        embeddings = torch.cat([o["instance_values"] for o in outputs])
        classes = torch.cat([o["semantic_logits"] for o in outputs]).argmax(-1)
        render_time = time.perf_counter() - start
        stats = self.clusters.fit(embeddings, classes, segments, views)
        total = time.perf_counter() - start
        CONSOLE.log(
            f"Clustered {len(views)} pixels into {len(self.clusters.ids)} objects in {total:.1f} s "
            f"(render {render_time:.1f} s, HDBSCAN {total - render_time:.1f} s)"
        )
        return {"per_class": stats, "objects": len(self.clusters.ids), "seconds": total, "render_seconds": render_time}

    # ---------------------------------------------------------------- losses and metrics

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        scene_frozen = self.training and self.config.freeze_scene  # evaluation still reports the RGB loss
        losses = {} if scene_frozen else super().get_loss_dict(outputs, batch, metrics_dict)
        if "semantic_logits" in outputs and self.training:  # not rendered while the scene is frozen
            target = batch["semantics"].to(self.device).view(-1)
            confidence = batch["confidence"].to(self.device).view(-1)
            cross_entropy = F.cross_entropy(outputs["semantic_logits"], target, reduction="none")
            losses["semantic_loss"] = self.config.semantic_loss_mult * (cross_entropy * confidence).mean()
        if self.training and self.step >= self.config.instance_loss_start_step:
            losses.update(self._instance_losses(outputs, batch))
        return losses

    def _instance_losses(self, outputs: Dict[str, Tensor], batch: Dict[str, Any]) -> Dict[str, Tensor]:
        per_image = batch["rays_per_image"]
        labels = batch["segments"].to(self.device).view(-1, per_image)
        confidence = batch["confidence"].to(self.device).view(-1, per_image)
        mult = self.config.instance_loss_mult
        if self.config.instance_loss == "linear-assignment":
            logits = outputs["instance_values"].view(*labels.shape, -1)
            return {"instance_loss": mult * linear_assignment_loss(logits, labels, confidence)}
        if self.config.instance_loss == "vanilla":
            embeddings = outputs["instance_values"].view(*labels.shape, -1)
            return {
                "instance_loss": mult
                * vanilla_contrastive_loss(embeddings, labels, self.config.contrastive_temperature)
            }
        fast = outputs["fast_embedding"].view(labels.shape[0], per_image // 2, -1)
        slow = outputs["slow_embedding"].view(labels.shape[0], per_image // 2, -1)
        fast_labels, slow_labels = labels[:, 0::2], labels[:, 1::2]
        return {
            "instance_loss": mult
            * slow_fast_contrastive_loss(fast, slow, fast_labels, slow_labels, self.config.contrastive_temperature),
            "concentration_loss": self.config.concentration_loss_mult
            * concentration_loss(fast, slow, fast_labels, slow_labels, confidence[:, 0::2]),
        }

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        metrics.pop("lpips")  # disabled: its weights would be downloaded
        images["semantics"] = torch.cat(
            [id_colours(batch["semantics"][..., 0]).to(self.device), outputs["semantics"]], 1
        )
        if "instance" in outputs:
            images["instance"] = outputs["instance"]
        return metrics, images


@torch.no_grad()
def quantile_samples(
    positions: Float[Tensor, "*rays samples 3"], weights: Float[Tensor, "*rays samples 1"], count: int
) -> Tuple[Float[Tensor, "*rays count 3"], Float[Tensor, "*rays count 1"]]:
    """``count`` samples per ray at the midpoint quantiles of its weight distribution, each weighted by an
    equal share of the ray's accumulation, so that ``(weights * f(positions)).sum(-2)`` estimates the full
    volume render of any field ``f``."""
    accumulation = weights.sum(-2, keepdim=True)
    cdf = weights[..., 0].cumsum(-1) / accumulation[..., 0].clamp_min(1e-10)
    quantiles = (torch.arange(count, device=weights.device, dtype=cdf.dtype) + 0.5) / count
    index = torch.searchsorted(cdf.contiguous(), quantiles.expand(*cdf.shape[:-1], count).contiguous())
    index = index.clamp_max(cdf.shape[-1] - 1)
    positions = torch.gather(positions, -2, index[..., None].expand(*index.shape, 3))
    return positions, (accumulation / count).expand(*index.shape, 1)


class _NoLPIPS(nn.Module):
    """Stands in for torchmetrics' LPIPS, which downloads AlexNet weights when built."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, *args) -> Tensor:
        return torch.tensor(float("nan"))


@contextmanager
def without_lpips():
    """Builds nerfacto without LPIPS: it would download AlexNet weights, and building must work offline."""
    import torchmetrics.image.lpip as lpip

    original = lpip.LearnedPerceptualImagePatchSimilarity
    lpip.LearnedPerceptualImagePatchSimilarity = _NoLPIPS
    try:
        yield
    finally:
        lpip.LearnedPerceptualImagePatchSimilarity = original
