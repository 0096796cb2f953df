"""The controls under the viewer's "Custom Elements": re-cluster, cluster size, and one object alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerClick, ViewerControl, ViewerNumber, ViewerSlider
from torch import nn

from contrastive_lift_ns.keys import Output
from contrastive_lift_ns.model import surface_points

if TYPE_CHECKING:
    from contrastive_lift_ns.model import ContrastiveLiftModel
    from contrastive_lift_ns.pipeline import ContrastiveLiftPipeline


class ClusteringControls(nn.Module):
    """Viewer elements for a pipeline's clustering. An ``nn.Module`` only so that the viewer finds the elements."""

    def __init__(self, pipeline: "ContrastiveLiftPipeline") -> None:
        super().__init__()
        model = pipeline.model
        # Callbacks close over the pipeline; storing it as an attribute would make it a submodule of its child.
        clusters = model.uses_clustering  # linear-assignment-lift has nothing to cluster
        self.recluster = ViewerButton(
            "Recluster now", cb_hook=lambda _: pipeline.recluster(min_cluster_size=self._size()), visible=clusters
        )
        self.min_cluster_size = ViewerSlider(
            "Min cluster size (0: auto)",
            model.config.clustering.min_cluster_size or 0,
            0,
            2000,
            step=5,
            visible=clusters,
            cb_hook=lambda _: pipeline.recluster(min_cluster_size=self._size()) if model.clusters.fitted else None,
            hint="HDBSCAN's smallest object, in sampled pixels; changing it re-clusters",
        )
        self.isolated_object = ViewerNumber(
            "Show object (0: all)",
            0,
            cb_hook=lambda element: setattr(model, "isolated_id", int(element.value)),
            hint="Dims every other object in the 'instance' output",
        )
        self.pick_object = ViewerButton("Pick object by clicking", cb_hook=lambda _: self._arm_picker(model))
        self.picker = ViewerControl()

    def _size(self) -> Optional[int]:
        """The slider's size for the next clustering; 0 means the configured (or automatic) one."""
        return int(self.min_cluster_size.value) or None

    def _arm_picker(self, model: "ContrastiveLiftModel") -> None:
        """The next click in the scene selects the object under the cursor."""

        def on_click(click: ViewerClick) -> None:
            self.picker.unregister_pointer_cb()
            self.isolated_object.value = object_at(model, click)

        self.picker.register_pointer_cb("click", on_click)


@torch.no_grad()
def object_at(model: "ContrastiveLiftModel", click: ViewerClick) -> int:
    """The instance id along a clicked ray (0 if none)."""
    device = model.device
    ray = RayBundle(
        origins=torch.tensor([click.origin], dtype=torch.float32, device=device),
        directions=torch.nn.functional.normalize(torch.tensor([click.direction], dtype=torch.float32), dim=-1).to(
            device
        ),
        pixel_area=torch.full((1, 1), 1e-6, device=device),
        camera_indices=torch.zeros(1, 1, dtype=torch.long, device=device),
    )
    outputs = model.render_rays(ray)
    images = model.label_images(
        outputs[Output.SEMANTIC_LOGITS], outputs[model.instance_output], surface_points(ray, outputs)
    )
    return int(images[Output.INSTANCE_ID].item()) if Output.INSTANCE_ID in images else 0
