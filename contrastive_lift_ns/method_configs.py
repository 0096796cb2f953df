"""The registered methods (``ns-train <method>``).

- ``contrastive-lift``: the paper's method, slow-fast contrastive + concentration loss, nerfacto-sized.
- ``contrastive-lift-vanilla``: the plain contrastive loss (eq. 3), no slow field.
- ``linear-assignment-lift``: Panoptic Lifting's Hungarian-matched instance logits, the paper's baseline.
- ``contrastive-lift-small``: the paper's method with small grids and few samples, for 64–128 px scenes on a
  CPU in minutes (tests, the demo, quick looks).

All train on the GPU when there is one and on the CPU otherwise.
"""

from __future__ import annotations

from typing import Dict

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from contrastive_lift_ns.clustering.instance_clusters import ClusteringConfig
from contrastive_lift_ns.data.datamanager import ContrastiveLiftDataManagerConfig
from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig
from contrastive_lift_ns.data.pixel_sampler import ContrastivePixelSamplerConfig
from contrastive_lift_ns.fields.label_field import LabelFieldConfig
from contrastive_lift_ns.model import ContrastiveLiftModelConfig, InstanceLoss
from contrastive_lift_ns.pipeline import ContrastiveLiftPipelineConfig
from contrastive_lift_ns.trainer import ContrastiveLiftTrainerConfig


def _optimizer(lr: float, final_lr: float, max_steps: int):
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=final_lr, max_steps=max_steps),
    }


def trainer_config(method_name: str, instance_loss: InstanceLoss, small: bool = False) -> ContrastiveLiftTrainerConfig:
    """One method's full configuration; ``small`` selects the CPU-sized preset."""
    steps = 2000 if small else 30000
    model = ContrastiveLiftModelConfig(
        instance_loss=instance_loss,
        eval_num_rays_per_chunk=1 << 13 if small else 1 << 15,
        average_init_density=0.01,
        camera_optimizer=CameraOptimizerConfig(mode="off" if small else "SO3xR3"),
    )
    if small:
        model.num_levels, model.log2_hashmap_size, model.max_res = 8, 15, 512
        model.num_proposal_samples_per_ray, model.num_nerf_samples_per_ray = (64, 32), 24
        model.proposal_net_args_list = [
            {"hidden_dim": 16, "log2_hashmap_size": 14, "num_levels": 4, "max_res": 64, "use_linear": False},
            {"hidden_dim": 16, "log2_hashmap_size": 14, "num_levels": 4, "max_res": 128, "use_linear": False},
        ]
        model.instance_field = LabelFieldConfig(num_levels=8, log2_hashmap_size=16)
        model.semantic_field = LabelFieldConfig(num_levels=8, log2_hashmap_size=16)
        model.label_samples_per_ray = 2
        # Measured on the 100-object room in a CPU-length run (docs/benchmarks/scene-grids-cpu-2026-12-03.md): a
        # scene grid grown with the room (1024, 2^17) gave PQ^scene 82.7 against 73.0 fixed; cells of 1.6 px keep
        # the 25-object room's grid at 512. A scene decay to 1e-4 trains too slowly (73.7 vs 77.9,
        # lift-bisect-cpu-2026-12-02.md): the small preset keeps a nearly flat scene rate.
        model.scene_cell_pixels = 1.6
        # On a CPU the hash grid's cost follows its table (8 levels, 49k points, forward, backward and Adam, one
        # thread: 195 ms at 2^15, 360 at 2^18, 838 at 2^20), so a 500-object room stops at 2^18 to fit its budget.
        model.scene_log2_hashmap_limit = 18
        # Per-image appearance codes let wrong geometry explain the images where a surface is in few views (a
        # 100-object room: test PSNR 13.6 with them, 17.5 without); generated scenes have constant lighting.
        model.use_appearance_embedding = False
        model.semantic_loss_start_step, model.instance_loss_start_step = 200, 500
        model.proposal_warmup, model.proposal_weights_anneal_max_num_iters = 500, 200
        model.clustering = ClusteringConfig(num_pixels=20_000, recluster_every=500)
    return ContrastiveLiftTrainerConfig(
        method_name=method_name,
        steps_per_eval_batch=500,
        steps_per_eval_image=1000 if small else 2000,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=1000 if small else 2000,
        max_num_iterations=steps,
        mixed_precision=True,  # nerfstudio turns it off on the CPU
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=ContrastiveLiftPipelineConfig(
            datamanager=ContrastiveLiftDataManagerConfig(
                dataparser=ContrastiveLiftDataParserConfig(),
                pixel_sampler=ContrastivePixelSamplerConfig(images_per_batch=2, rays_per_image=256)
                if small
                else ContrastivePixelSamplerConfig(images_per_batch=4, rays_per_image=512),
                train_num_rays_per_batch=1024 if small else 4096,
                eval_num_rays_per_batch=1024 if small else 4096,
            ),
            model=model,
        ),
        optimizers={
            "proposal_networks": _optimizer(1e-2, 9e-3 if small else 1e-4, steps),
            "fields": _optimizer(1e-2, 9e-3 if small else 1e-4, steps),
            "camera_opt": _optimizer(1e-3, 1e-4, steps),
            # The trainer fits every decay to the run, and the label fields' to their stages (loss start to last step).
            "semantic_field": _optimizer(1e-2, 1e-3, steps),
            "instance_field": _optimizer(1e-2, 1e-3, steps),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 13 if small else 1 << 15),
        vis="viewer",
    )


METHODS: Dict[str, InstanceLoss] = {
    "contrastive-lift": "slow-fast",
    "contrastive-lift-vanilla": "vanilla",
    "linear-assignment-lift": "linear-assignment",
}
"""The registered full-size methods and their instance losses (the benchmarks compare these three)."""

contrastive_lift = MethodSpecification(
    config=trainer_config("contrastive-lift", METHODS["contrastive-lift"]),
    description="Contrastive Lift (NeurIPS 2023): 2D instance masks → consistent 3D instances, slow-fast loss.",
)
contrastive_lift_vanilla = MethodSpecification(
    config=trainer_config("contrastive-lift-vanilla", METHODS["contrastive-lift-vanilla"]),
    description="Contrastive Lift with the vanilla contrastive loss (eq. 3) and no slow field.",
)
linear_assignment_lift = MethodSpecification(
    config=trainer_config("linear-assignment-lift", METHODS["linear-assignment-lift"]),
    description="Panoptic Lifting's baseline: a fixed number of instance logits, Hungarian-matched per image.",
)
contrastive_lift_small = MethodSpecification(
    config=trainer_config("contrastive-lift-small", "slow-fast", small=True),
    description="contrastive-lift with small grids and few samples: 64–128 px scenes on a CPU in minutes.",
)
