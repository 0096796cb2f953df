"""Contrastive Lift: nerfacto plus a semantic field and an instance embedding field (slow-fast contrastive).

The scene (density, colour, proposal networks) is nerfacto's, trained by the RGB loss, plus nerfstudio's depth loss
where the frames have depth maps (``depth_loss_mult``; 0 turns it off). The label fields read detached sample
positions and are rendered with detached weights, so no semantic or instance gradient reaches the geometry
(``semantic_geometry_gradient`` lets the semantic one through). They are evaluated at only
``label_samples_per_ray`` samples per ray, placed at the quantiles of the ray's weight distribution, each carrying
an equal share of the ray's accumulation: the proposal sampler spreads a surface's weight over many nearby samples,
so a few quantiles render labels within about 1 % of the full sum at a fraction of its cost (the heaviest few
samples would miss a fifth of it). Rendered views read the label fields at the surface point each pixel sees, so
that a pixel at an object's edge takes one object's labels, not a blend of the object's and its background's.

A training batch holds uniform rays, which train colour, density and semantics, and instance rays drawn from
2D segment pixels (``data/pixel_sampler.py``), which the instance loss alone uses; the data manager marks the
latter in the ray bundle. Losses follow a schedule: RGB only at first, then the semantic cross-entropy, then
the instance loss: ``slow-fast`` (eq. 4 + eq. 5, the paper's method), ``vanilla`` (eq. 3) or
``linear-assignment`` (Panoptic Lifting's baseline). Embeddings become object ids by clustering
(``InstanceClusters``), which is cached in the model, refreshed while training and saved with the checkpoint.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.losses import DepthLossType, depth_loss, scale_gradients_by_distance_squared
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from contrastive_lift_ns import workarounds
from contrastive_lift_ns.clustering.corrections import Corrections
from contrastive_lift_ns.clustering.instance_clusters import ClusteringConfig, InstanceClusters
from contrastive_lift_ns.clustering.specks import absorb_specks, speck_limit
from contrastive_lift_ns.data.label_volume import LabelVolume
from contrastive_lift_ns.data.scene_format import SceneClasses, SceneFormatError
from contrastive_lift_ns.drawing.palette import embedding_colours, id_colours
from contrastive_lift_ns.fields.label_field import LabelField, LabelFieldConfig
from contrastive_lift_ns.fields.slow_field import SlowField
from contrastive_lift_ns.keys import Batch, Output, RayMetadata
from contrastive_lift_ns.losses.concentration import concentration_loss
from contrastive_lift_ns.losses.contrastive import slow_fast_contrastive_loss, vanilla_contrastive_loss
from contrastive_lift_ns.losses.linear_assignment import linear_assignment_loss
from contrastive_lift_ns.validation import require

InstanceLoss = Literal["slow-fast", "vanilla", "linear-assignment"]
_INSTANCE_MODULES = ("instance_field.", "slow_field.", "clusters.")
_SURFACE_ACCUMULATION = 0.5  # a pixel sees a surface (its depth gives a 3D point) from this accumulation


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
    max_instances: int = 500
    """linear-assignment only: the fixed number of instance logits, an upper bound on the objects (500: the
    authors' setting for Panoptic Lifting on Messy Rooms)."""
    instance_field: LabelFieldConfig = field(default_factory=lambda: LabelFieldConfig(log2_hashmap_size=18))
    """Hash grid and MLP of the instance field (the slow field copies it)."""
    semantic_field: LabelFieldConfig = field(default_factory=lambda: LabelFieldConfig(log2_hashmap_size=18))
    """Hash grid and MLP of the semantic field."""
    label_samples_per_ray: int = 8
    """Training evaluates the label fields at this many samples per ray, at the quantiles of its weights
    (rendered views read them at the surface point each pixel sees)."""
    speck_size: float = 0.06
    """In rendered views, a piece of an object of at most this fraction of the view's side in pixels (7 px at
    128², 30 at 512²) takes the id around it, or the background's where no object borders it
    (``clustering/specks.py``); 0 keeps every piece."""
    semantic_loss_mult: float = 0.1
    """Weight of the confidence-weighted semantic cross-entropy (the authors' 0.1)."""
    contrastive_temperature: float = 1.0
    """slow-fast: divides the similarities before the softmax (1: the authors' code, which ignores its 100)."""
    vanilla_temperature: float = 100.0
    """vanilla: divides the squared distances of positive pairs (negatives use 1), as the authors' code does."""
    instance_loss_mult: float = 1.0
    """Weight of the contrastive (or linear-assignment) loss."""
    concentration_loss_mult: float = 1.0
    """Weight of the concentration loss (slow-fast only)."""
    semantic_geometry_gradient: float = 0.0
    """Scale of the semantic loss's gradient into the density (0: detached, as the authors' code). The semantic
    field has no view direction, so it cannot say "floor" and "chair" at one point: passed on, the 2D labels push
    an object that the colour baked into the background back in front of it. Training then renders the uniform
    rays' semantics at every final sample rather than at ``label_samples_per_ray`` quantiles."""
    semantic_geometry_fade: float = 0.5
    """Share of the run over which ``semantic_geometry_gradient`` fades linearly to 0 (0: it keeps its scale to
    the end). The labels pull objects out of the background early on; after that, colour alone clears the specks
    of density that the labels' noise left."""
    semantic_loss_start_step: int = 1000
    """Step at which the semantic loss starts (RGB only before)."""
    instance_loss_start_step: int = 3000
    """Step at which the instance loss starts; geometry should be reasonable by then."""
    instance_field_only: bool = False
    """Train the instance field alone: geometry, colour and semantics stay as loaded from pretrained_checkpoint.
    This is the paper's protocol for comparing instance losses on one scene."""
    pretrained_checkpoint: Optional[Path] = None
    """A nerfstudio checkpoint of this model whose geometry, colour and semantic weights are loaded at start-up."""
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    """How embeddings are clustered into objects."""
    scene_cell_pixels: Optional[float] = 1.5
    """Width of the scene field's finest cell, in pixels at the distance the cameras look at: its resolution
    (max_res) grows to give that where the room is large, and its hash table with it (``scene_grids``); it never
    shrinks below the configured sizes, and the proposal networks keep theirs. None: fixed sizes."""
    scene_max_res_limit: int = 8192
    """The largest finest resolution the scene field may get from scene_cell_pixels."""
    scene_log2_hashmap_limit: int = 21
    """The largest log2 hash table size the scene field may get from scene_cell_pixels."""
    depth_loss_mult: float = 1e-3
    """Weight of nerfstudio's DS-NeRF depth loss on the uniform rays, used where the frames have depth maps
    (``depth_file_path`` in transforms.json, or a paper layout's depth/ folder); 0 trains from RGB alone."""
    depth_sigma: float = 0.01
    """Spread of the depth loss around the measured depth, in nerfstudio's scaled scene units (as depth-nerfacto's
    depth_sigma)."""
    is_euclidean_depth: bool = False
    """The depth maps hold distances from the camera centre rather than z-depth along the optical axis."""

    def __post_init__(self) -> None:
        require(self, "embedding_dim", self.embedding_dim >= 1, "must be at least 1")
        require(self, "max_instances", self.max_instances >= 1, "must be at least 1")
        require(self, "label_samples_per_ray", self.label_samples_per_ray >= 1, "must be at least 1")
        require(self, "speck_size", self.speck_size >= 0, "must be at least 0")
        require(self, "semantic_geometry_fade", 0.0 <= self.semantic_geometry_fade <= 1.0, "must lie in [0, 1]")
        require(self, "slow_field_momentum", 0.0 <= self.slow_field_momentum < 1.0, "must lie in [0, 1)")
        for name in ("contrastive_temperature", "vanilla_temperature"):
            require(self, name, getattr(self, name) > 0, "must be positive")
        require(self, "depth_sigma", self.depth_sigma > 0, "must be positive")
        for name in ("semantic_loss_mult", "instance_loss_mult", "concentration_loss_mult", "depth_loss_mult"):
            require(self, name, getattr(self, name) >= 0, "must not be negative")
        for name in ("semantic_loss_start_step", "instance_loss_start_step"):
            require(self, name, getattr(self, name) >= 0, "must not be negative")
        positive = self.scene_cell_pixels is None or self.scene_cell_pixels > 0
        require(self, "scene_cell_pixels", positive, "must be positive")

    def scene_grid_sizes(self) -> List[int]:
        """The scene field's and proposal networks' (max_res, log2_hashmap_size), flattened (saved with the
        model, since the cameras that set them may differ when a run is loaded for another split)."""
        sizes = [self.max_res, self.log2_hashmap_size]
        for args in self.proposal_net_args_list:
            sizes += [args["max_res"], args["log2_hashmap_size"]]
        return sizes

    def with_scene_grids(self, sizes: List[int]) -> "ContrastiveLiftModelConfig":
        """This configuration with the grid sizes of ``scene_grid_sizes``."""
        pairs = [sizes[i : i + 2] for i in range(0, len(sizes), 2)]
        proposals = [
            {**args, "max_res": res, "log2_hashmap_size": log2}
            for args, (res, log2) in zip(self.proposal_net_args_list, pairs[1:])
        ]
        return replace(self, max_res=pairs[0][0], log2_hashmap_size=pairs[0][1], proposal_net_args_list=proposals)

    def scene_grids(self, volume: LabelVolume) -> "ContrastiveLiftModelConfig":
        """This configuration with the scene field's grid grown for ``volume``.

        nerfacto's grids span its contracted cube [-2, 2] at a fixed resolution, and nerfstudio scales every
        room into it, so a fixed grid gets coarser as the room grows. The finest scene cell is made
        ``scene_cell_pixels`` wide where the cameras look, and the hash table grows by the square of the factor
        (the cells on a surface). The proposal networks keep their sizes: they only place samples, and grown
        proposal grids trained too slowly (100 objects: PQ^scene 65.2 with them, 82.7 without;
        docs/benchmarks/scene-grids-cpu-2026-12-03.md).
        """
        if self.scene_cell_pixels is None:
            return self
        needed = min(volume.cells(4.0, self.scene_cell_pixels), self.scene_max_res_limit)
        factor = max(1.0, needed / self.max_res)
        grow = math.ceil(2.0 * math.log2(factor) - 1e-9)

        log2_size = max(self.log2_hashmap_size, min(self.log2_hashmap_size + grow, self.scene_log2_hashmap_limit))
        return replace(self, max_res=round(self.max_res * factor), log2_hashmap_size=log2_size)


class ContrastiveLiftModel(NerfactoModel):
    """nerfacto with semantic and instance fields rendered on frozen geometry."""

    config: ContrastiveLiftModelConfig

    def populate_modules(self) -> None:
        if self.config.predict_normals:
            raise ValueError("contrastive-lift does not support --pipeline.model.predict-normals")
        workarounds.activate()  # checkpoints of this model load and its videos render
        volume = self.kwargs["metadata"]["label_volume"]
        saved = getattr(self, "_saved_scene_grids", None)  # set when a checkpoint brings its own sizes
        self.config = self.config.scene_grids(volume) if saved is None else self.config.with_scene_grids(saved)
        with workarounds.without_lpips():
            super().populate_modules()
        self.register_buffer("scene_grid_sizes", torch.tensor(self.config.scene_grid_sizes()))
        if saved is None:
            self.register_load_state_dict_pre_hook(_take_saved_scene_grids)
        self.scene_classes: SceneClasses = self.kwargs["metadata"]["scene_classes"]
        self.step = 0
        self.last_step: Optional[int] = None
        """The run's last step, once a trainer has set up the callbacks (it fades the semantic gradient)."""

        def label_field(config: LabelFieldConfig, out_dim: int) -> LabelField:
            return config.setup(out_dim=out_dim, volume=volume, implementation=self.config.implementation)

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
        self.corrections = Corrections()  # by hand, replayed on the clustering's ids; the pipeline keeps them
        self.isolated_id = 0  # the viewer's selected object; 0 shows all
        if self.config.pretrained_checkpoint is not None:
            self._load_pretrained(self.config.pretrained_checkpoint)

    # ---------------------------------------------------------------- training set-up

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        groups = {"instance_field": list(self.instance_field.parameters())}
        if not self.config.instance_field_only:
            groups.update(super().get_param_groups())
            groups["semantic_field"] = list(self.semantic_field.parameters())
        return groups

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        # nerfacto's callbacks anneal the proposal sampling over the first steps; with the instance field alone
        # the loaded proposal networks are already trained, so the sampler keeps its trained state (anneal 1).
        callbacks = [] if self.config.instance_field_only else super().get_training_callbacks(attributes)
        self.last_step = getattr(attributes.trainer, "last_step", None)

        def set_step(step: int) -> None:
            self.step = step

        def after_step(step: int) -> None:
            if step < self.config.instance_loss_start_step:
                return
            if self.slow_field is not None:
                self.slow_field.update(self.instance_field)
            every = self.config.clustering.recluster_every
            since = step - self.config.instance_loss_start_step
            if self.uses_clustering and (step == self.last_step or (every > 0 and since > 0 and since % every == 0)):
                attributes.pipeline.recluster()

        callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_step))
        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_step))
        return callbacks

    def update_to_step(self, step: int) -> None:
        super().update_to_step(step)
        self.step = step

    @property
    def uses_clustering(self) -> bool:
        return self.config.instance_loss != "linear-assignment"

    def objects_unavailable(self, step: int) -> Optional[str]:
        """Why a checkpoint at ``step`` has no object ids yet (for an error message), or None when it has them."""
        start = self.config.instance_loss_start_step
        if step < start:
            return (
                f"the checkpoint is from step {step}, before the instance loss starts (instance_loss_start_step="
                f"{start}), so it has no objects yet; train longer"
            )
        if self.uses_clustering and not self.clusters.fitted:
            every = self.config.clustering.recluster_every
            return (
                f"the model was never clustered into objects (clustering runs at the last training step and every "
                f"{every} steps after step {start}); train longer"
            )
        return None

    def get_extra_state(self) -> Dict[str, Any]:
        return {"semantic_classes": list(self.scene_classes.names)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        trained = tuple(state.get("semantic_classes", self.scene_classes.names))
        if trained != tuple(self.scene_classes.names):
            raise SceneFormatError(
                f"the scene's semantic classes changed since training (cl-segment run again?): the checkpoint was "
                f"trained on {_listed(trained)}, transforms.json now lists {_listed(self.scene_classes.names)}; "
                "train again, or give the run the transforms.json it was trained with"
            )

    def _load_pretrained(self, checkpoint: Path) -> None:
        """Loads everything but the instance modules from a checkpoint, and insists that all of it is there."""
        state = torch.load(checkpoint, map_location="cpu")["pipeline"]
        state = {k[len("_model.") :]: v for k, v in state.items() if k.startswith("_model.")}
        state = {k.removeprefix("module."): v for k, v in state.items()}  # written by several processes (DDP)
        pretrained = {k: v for k, v in state.items() if not k.startswith(_INSTANCE_MODULES)}
        missing, _ = self.load_state_dict(pretrained, strict=False)
        missing = [k for k in missing if not k.startswith(_INSTANCE_MODULES)]
        if missing:
            raise ValueError(
                f"{checkpoint} lacks {len(missing)} weights of the geometry, colour or semantics (e.g. {missing[0]}); "
                "it must come from this model with the same sizes and the same --pipeline.model.implementation"
            )

    # ---------------------------------------------------------------- rendering

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Any]:
        marked = ray_bundle.metadata.get(RayMetadata.INSTANCE_RAY)
        if marked is None:  # rendering views: every output of every ray
            outputs, positions, weights = self._render(ray_bundle)
            surface = surface_points(ray_bundle, outputs)
            outputs[Output.SEMANTIC_LOGITS] = _surface_labels(self.semantic_field, surface, positions, weights)
            outputs[self.instance_output] = _surface_labels(self.instance_field, surface, positions, weights)
            return outputs
        # A training (or evaluation-loss) batch: uniform rays first, then the instance rays.
        uniform = int((~marked[:, 0]).sum())
        outputs: Dict[str, Any] = {}
        if not (self.training and self.config.instance_field_only):  # colour and semantics stay as loaded
            outputs, positions, weights = self._render(ray_bundle[:uniform])
            if self.training and self.step >= self.config.semantic_loss_start_step:
                outputs[Output.SEMANTIC_LOGITS] = self._training_semantics(outputs, positions, weights)
        if self.training and self.step >= self.config.instance_loss_start_step and len(ray_bundle) > uniform:
            with torch.no_grad():  # the instance loss trains the instance field only
                _, positions, weights = self._render(ray_bundle[uniform:])
            outputs.update(self._instance_outputs(positions, weights))
        return outputs

    def _training_semantics(self, outputs: Dict[str, Any], positions: Tensor, weights: Tensor) -> Tensor:
        """The uniform rays' semantic logits; with ``semantic_geometry_gradient``, at every final sample, with a
        scaled gradient into the weights."""
        scale = self.semantic_geometry_scale
        if scale == 0:
            return _render_field(self.semantic_field, positions, weights)
        samples, full = outputs["ray_samples_list"][-1], outputs["weights_list"][-1]
        scaled = full.detach() + scale * (full - full.detach())
        return _render_field(self.semantic_field, samples.frustums.get_positions().detach(), scaled)

    @property
    def semantic_geometry_scale(self) -> float:
        """``semantic_geometry_gradient`` at this step, faded over the first ``semantic_geometry_fade`` of the run
        (kept as it is where the run's length is unknown)."""
        scale, fade = self.config.semantic_geometry_gradient, self.config.semantic_geometry_fade
        if fade == 0 or self.last_step is None:
            return scale
        return scale * max(0.0, 1.0 - self.step / (fade * (self.last_step + 1)))

    def _instance_outputs(self, positions: Tensor, weights: Tensor) -> Dict[str, Tensor]:
        """The instance rays' renders for the loss; with a slow field, even rays are rendered by the fast field
        and odd rays by the slow one (each ray by one field, so the cost is that of one field)."""
        if self.slow_field is None:
            return {self.instance_output: _render_field(self.instance_field, positions, weights)}
        fast = _render_field(self.instance_field, positions[0::2], weights[0::2])
        with torch.no_grad():
            slow = _render_field(self.slow_field, positions[1::2], weights[1::2])
        return {Output.FAST_EMBEDDING: fast, Output.SLOW_EMBEDDING: slow}

    def _render(self, ray_bundle: RayBundle) -> Tuple[Dict[str, Any], Tensor, Tensor]:
        """The scene's outputs, and the positions and weights at which the label fields are rendered."""
        with torch.no_grad() if self.config.instance_field_only else nullcontext():
            outputs, ray_samples, weights = self._render_scene(ray_bundle)
        # no_grad inside: label losses never reach the geometry through these positions or weights
        positions, label_weights = quantile_samples(
            ray_samples.frustums.get_positions(), weights, self.config.label_samples_per_ray
        )
        return outputs, positions, label_weights

    @property
    def instance_output(self) -> str:
        """The key of the instance field's render: an embedding, or linear assignment's logits."""
        return Output.INSTANCE_LOGITS if self.config.instance_loss == "linear-assignment" else Output.EMBEDDING

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
        if self.training:  # the proposal, distortion and depth losses need every level
            outputs["weights_list"] = weights_list + [weights]
            outputs["ray_samples_list"] = ray_samples_list + [ray_samples]
            if "directions_norm" in ray_bundle.metadata:  # z-depth → distance along the ray, for the depth loss
                outputs["directions_norm"] = ray_bundle.metadata["directions_norm"]
        return outputs, ray_samples, weights

    @torch.no_grad()
    def get_outputs_for_camera_ray_bundle(self, camera_ray_bundle: RayBundle) -> Dict[str, Tensor]:
        outputs = super().get_outputs_for_camera_ray_bundle(camera_ray_bundle)
        positions = surface_points(camera_ray_bundle, outputs)
        labels = self.label_images(outputs.pop(Output.SEMANTIC_LOGITS), outputs.pop(self.instance_output), positions)
        outputs.update(labels)
        return outputs

    def label_images(
        self, semantic_logits: Tensor, instance_render: Tensor, positions: Optional[Tensor] = None
    ) -> Dict[str, Tensor]:
        """Raw label renders → images: ``semantic_class`` and ``instance_id`` (float ids, 1 channel), their
        palette colours ``semantics`` and ``instance``, and the embedding's colours (``keys.Output``).

        ``instance_render`` is the embedding, or linear assignment's logits; ``positions`` (the pixels' surface
        points, ``surface_points``) tell apart the parts of a cluster split in space. Instance ids appear once
        the model has been clustered (linear-assignment needs no clustering), with the hand corrections applied.
        """
        classes = semantic_logits.argmax(-1)
        images = {}
        if self.uses_clustering:
            images[Output.EMBEDDING_COLOURS] = embedding_colours(instance_render)
            if not self.clusters.fitted:
                return {**images, **_class_images(classes)}
            # specks go before the hand corrections, so that deleting an object deletes the specks it took in
            classes, ids = self._without_specks(classes, self.clusters.assign(instance_render, classes, positions))
            ids = self.corrections.apply(ids, instance_render, positions)
        else:
            thing = torch.as_tensor(self.scene_classes.is_thing, device=classes.device)[classes]
            ids = torch.where(thing, instance_render.argmax(-1) + 1, torch.zeros_like(classes))
            classes, ids = self._without_specks(classes, ids)
        images.update(_class_images(classes))
        images[Output.INSTANCE_ID] = ids[..., None].float()
        colours = id_colours(ids)
        if self.isolated_id:
            dimmed = 0.25 * colours.mean(-1, keepdim=True).expand_as(colours)
            colours = torch.where((ids == self.isolated_id)[..., None], colours, dimmed)
        images[Output.INSTANCE] = colours
        return images

    def _without_specks(self, classes: Tensor, ids: Tensor) -> Tuple[Tensor, Tensor]:
        if ids.dim() != 2:  # a list of rays, not an image
            return classes, ids
        return absorb_specks(classes, ids, speck_limit(*ids.shape, self.config.speck_size))

    # ---------------------------------------------------------------- clustering

    @torch.no_grad()
    def render_rays(self, rays: RayBundle) -> Dict[str, Tensor]:
        """Every output of a flat bundle of rays, rendered in evaluation mode chunk by chunk."""
        was_training = self.training
        self.eval()
        try:
            chunk = self.config.eval_num_rays_per_chunk
            chunks = [self.forward(rays[i : i + chunk]) for i in range(0, len(rays), chunk)]
        finally:
            self.train(was_training)
        return {key: torch.cat([c[key] for c in chunks]) for key, value in chunks[0].items() if torch.is_tensor(value)}

    @torch.no_grad()
    def fit_clusters(
        self, rays: RayBundle, segments: Tensor, views: Tensor, min_cluster_size: Optional[int] = None
    ) -> Dict[str, Any]:
        """Renders the embeddings of training pixels and clusters them into objects (``InstanceClusters.fit``).

        ``segments`` and ``views`` are each pixel's 2D segment id and training view; ``min_cluster_size``
        overrides the configured one (None: the configuration's, or the automatic choice).
        """
        if not self.uses_clustering:
            raise ValueError("linear-assignment-lift predicts instance ids directly; it has nothing to cluster")
        start = time.perf_counter()
        outputs = self.render_rays(rays)
        render_time = time.perf_counter() - start
        classes = outputs[Output.SEMANTIC_LOGITS].argmax(-1)
        positions = surface_points(rays, outputs)
        stats = self.clusters.fit(outputs[Output.EMBEDDING], classes, segments, views, min_cluster_size, positions)
        total = time.perf_counter() - start
        sizes = ", ".join(str(s["min_cluster_size"]) for s in stats.values())
        split = sum(s["objects"] - s["clusters"] for s in stats.values())
        CONSOLE.log(
            f"Clustered {len(rays)} pixels into {len(self.clusters.ids)} objects in {total:.1f} s "
            f"(render {render_time:.1f} s; min cluster size {sizes or '-'}; {split} more from clusters split in space)"
        )
        return {"per_class": stats, "objects": len(self.clusters.ids), "seconds": total, "render_seconds": render_time}

    # ---------------------------------------------------------------- losses and metrics

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        return super().get_metrics_dict(outputs, batch) if "rgb" in outputs else {}  # no colour: instances only

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        losses = super().get_loss_dict(outputs, batch, metrics_dict) if "rgb" in outputs else {}
        if self.training and Output.SEMANTIC_LOGITS in outputs:
            target = batch[Batch.SEMANTICS].to(self.device).view(-1)
            confidence = batch[Batch.CONFIDENCE].to(self.device).view(-1)
            cross_entropy = F.cross_entropy(outputs[Output.SEMANTIC_LOGITS], target, reduction="none")
            losses["semantic_loss"] = self.config.semantic_loss_mult * (cross_entropy * confidence).mean()
        if self.training and (Output.FAST_EMBEDDING in outputs or self.instance_output in outputs):
            losses.update(self._instance_losses(outputs, batch))
        if self.training and Batch.DEPTH in batch and "weights_list" in outputs and self.config.depth_loss_mult > 0:
            losses["depth_loss"] = self.config.depth_loss_mult * self._depth_loss(outputs, batch[Batch.DEPTH])
        return losses

    def _depth_loss(self, outputs: Dict[str, Any], depth: Tensor) -> Tensor:
        """nerfstudio's DS-NeRF loss of the uniform rays' measured depth, averaged over the proposal levels and
        the final samples, so the proposal networks learn the surfaces too (as depth-nerfacto does)."""
        levels = list(zip(outputs["weights_list"], outputs["ray_samples_list"]))
        total = sum(
            depth_loss(
                weights=weights,
                ray_samples=samples,
                termination_depth=depth.to(self.device),
                predicted_depth=outputs["expected_depth"],
                sigma=torch.tensor([self.config.depth_sigma], device=self.device),
                directions_norm=outputs["directions_norm"],
                is_euclidean=self.config.is_euclidean_depth,
                depth_loss_type=DepthLossType.DS_NERF,
            )
            for weights, samples in levels
        )
        return total / len(levels)

    def _instance_losses(self, outputs: Dict[str, Tensor], batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """The instance loss on the instance rays, ``images × rays_per_image`` of them, image by image."""
        per_image = batch[Batch.RAYS_PER_IMAGE]
        labels = batch[Batch.INSTANCE_SEGMENTS].to(self.device).view(-1, per_image)
        confidence = batch[Batch.INSTANCE_CONFIDENCE].to(self.device).view(-1, per_image)
        mult = self.config.instance_loss_mult
        if self.config.instance_loss == "linear-assignment":
            logits = outputs[Output.INSTANCE_LOGITS].view(*labels.shape, -1)
            return {"instance_loss": mult * linear_assignment_loss(logits, labels, confidence)}
        if self.config.instance_loss == "vanilla":
            embeddings = outputs[Output.EMBEDDING].view(*labels.shape, -1)
            return {
                "instance_loss": mult * vanilla_contrastive_loss(embeddings, labels, self.config.vanilla_temperature)
            }
        fast = outputs[Output.FAST_EMBEDDING].view(labels.shape[0], per_image // 2, -1)
        slow = outputs[Output.SLOW_EMBEDDING].view(labels.shape[0], per_image // 2, -1)
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
        images[Output.SEMANTICS] = torch.cat(
            [id_colours(batch[Batch.SEMANTICS][..., 0]).to(self.device), outputs[Output.SEMANTICS]], 1
        )
        if Output.INSTANCE in outputs:
            images[Output.INSTANCE] = outputs[Output.INSTANCE]
        return metrics, images


def _listed(names) -> str:
    shown = ", ".join(list(names)[:5])
    return f"[{shown}{', …' if len(names) > 5 else ''}] ({len(names)} classes)"


def _take_saved_scene_grids(model: "ContrastiveLiftModel", state_dict: Dict[str, Any], prefix: str, *args) -> None:
    """A checkpoint brings its own scene grid sizes: the modules are rebuilt with them before its weights load."""
    saved = state_dict.get(prefix + "scene_grid_sizes")
    if saved is None or saved.tolist() == model.scene_grid_sizes.tolist():
        return
    device = model.scene_grid_sizes.device
    model._saved_scene_grids = [int(v) for v in saved.tolist()]
    model.populate_modules()
    model.to(device)


def surface_points(rays: RayBundle, outputs: Dict[str, Tensor]) -> Tensor:
    """Each ray's rendered surface point (origin + depth · direction); NaN where it sees little surface."""
    points = rays.origins + rays.directions * outputs["depth"]
    return points.masked_fill(outputs["accumulation"] < _SURFACE_ACCUMULATION, math.nan)


def _class_images(classes: Tensor) -> Dict[str, Tensor]:
    return {Output.SEMANTIC_CLASS: classes[..., None].float(), Output.SEMANTICS: id_colours(classes)}


def _render_field(field: nn.Module, positions: Tensor, weights: Tensor) -> Tensor:
    """A label field's volume render at the quantile samples of ``_render``."""
    return (weights * field(positions)).sum(-2)


def _surface_labels(field: nn.Module, surface: Tensor, positions: Tensor, weights: Tensor) -> Tensor:
    """A label field read at each ray's surface point, and volume-rendered where the ray sees little surface.

    At an object's edge a ray's weight is shared by the object and what lies behind it, and a volume render
    blends their labels: a blend of two embeddings can be nearest a third object's centroid, which then shows
    as specks along the edges (the 100-object room of docs/benchmarks/surface-labels-cpu-2026-12-07.md). The
    surface point belongs to one of them. Training still renders volumetrically, as the paper does.
    """
    seen = torch.isfinite(surface).all(-1)
    out = surface.new_zeros(*seen.shape, field.out_dim)
    if seen.any():  # (a tcnn grid takes no empty batch)
        out[seen] = field(surface[seen]).to(out)
    if not seen.all():
        out[~seen] = _render_field(field, positions[~seen], weights[~seen]).to(out)
    return out


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
