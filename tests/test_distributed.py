"""Several training processes, started the way nerfstudio's launcher starts them: one torch.distributed process
group (gloo on the loopback here, so it runs on CPUs), then nerfstudio's own ``train_loop`` on each rank."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nerfstudio.scripts.train import train_loop
from nerfstudio.utils.eval_utils import eval_setup

from contrastive_lift_ns.evaluation.scene_evaluation import evaluate
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.method_configs import contrastive_lift_small
from contrastive_lift_ns.trainer import ContrastiveLiftTrainer

pytestmark = pytest.mark.slow
WORLD = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, port: int, config, out: Path) -> None:
    """One rank: join the process group, train with train_loop, then keep this rank's model (and, on rank 0, the
    PQ of the trained pipeline) for the test to compare."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    train = ContrastiveLiftTrainer.train

    def train_and_keep(trainer: ContrastiveLiftTrainer) -> None:
        train(trainer)
        pq = evaluate(trainer.pipeline)["pq_scene"] if rank == 0 else None
        torch.save({"model": trainer.pipeline.model.state_dict(), "pq": pq}, out / f"rank{rank}.pt")

    ContrastiveLiftTrainer.train = train_and_keep  # a spawned process of its own: nothing else sees this
    try:
        train_loop(local_rank=rank, world_size=WORLD, config=config, global_rank=rank)
    finally:
        dist.destroy_process_group()


def test_two_cpu_ranks_train_identical_fields_one_clustering_and_a_checkpoint_that_evaluates(tmp_path):
    scene = make_scene(
        MakeSceneConfig(output_dir=tmp_path / "scene", num_objects=4, num_views=12, resolution=32), progress=False
    )
    config = copy.deepcopy(contrastive_lift_small.config)
    config.pipeline.datamanager.data = scene
    config.output_dir = tmp_path / "out"
    config.vis = "tensorboard"
    config.max_num_iterations = 150
    config.steps_per_save = 150
    config.machine.device_type = "cpu"
    config.viewer.quit_on_train_completion = True
    config.logging.local_writer.enable = False
    model = config.pipeline.model
    model.semantic_loss_start_step, model.instance_loss_start_step = 10, 30
    model.clustering.num_pixels, model.clustering.recluster_every = 4000, 60
    model.proposal_weights_anneal_max_num_iters = 50  # annealed by the end, as a loaded checkpoint is
    config.set_timestamp()
    config.save_config()
    mp.spawn(_rank, args=(_free_port(), config, tmp_path), nprocs=WORLD, join=True)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", map_location="cpu", weights_only=False) for r in range(WORLD)]
    first, second = ranks[0]["model"], ranks[1]["model"]
    for prefix in ("instance_field.", "slow_field.", "semantic_field.", "field."):
        keys = [k for k in first if k.startswith(prefix)]
        assert keys and all(torch.equal(first[k], second[k]) for k in keys), prefix  # bit for bit
    clusters = [state["clusters._extra_state"] for state in (first, second)]
    assert len(clusters[0]["ids"]) > 0
    assert all(torch.equal(clusters[0][key], clusters[1][key]) for key in ("centroids", "classes", "ids"))

    # Only rank 0 wrote checkpoints; one loads in a single process and scores what the run scored.
    checkpoints = sorted((config.get_base_dir() / "nerfstudio_models").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["step-000000149.ckpt"]
    pipeline = eval_setup(config.get_base_dir() / "config.yml", test_mode="test")[1]
    assert evaluate(pipeline)["pq_scene"] == pytest.approx(ranks[0]["pq"], abs=1e-12)
    metrics = tmp_path / "metrics.json"
    cl_eval = Path(sys.executable).parent / "cl-eval"
    result = subprocess.run(
        [str(cl_eval), "--load-config", str(config.get_base_dir() / "config.yml"), "--output-path", str(metrics)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads(metrics.read_text())["pq_scene"] == pytest.approx(ranks[0]["pq"], abs=1e-12)
