"""A trained model's objects: consistent ids across views, PQ, checkpointed clusters, stable colours, cl-eval."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from nerfstudio.utils.eval_utils import eval_setup
from PIL import Image

from contrastive_lift_ns.data.scene_format import read_label_map
from contrastive_lift_ns.evaluation.panoptic_quality import panoptic_quality
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.keys import Output

from .conftest import train_in_process

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def pipeline(trained_run):
    return eval_setup(trained_run.config, test_mode="test")[1]


@pytest.fixture(scope="module")
def test_views(pipeline):
    """(outputs, batch) of every test view."""
    views = []
    for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
        views.append((pipeline.model.get_outputs_for_camera(camera), batch))
    return views


def test_training_left_clusters_in_the_checkpoint(pipeline):
    assert pipeline.model.clusters.fitted and len(pipeline.model.clusters.ids) >= 2


def test_an_object_keeps_its_id_across_views(test_views):
    """For each ground-truth object, the predicted id covering most of it in one view should be the same in
    the other views far more often than chance."""
    majority: dict = {}
    predicted_ids = set()
    for outputs, batch in test_views:
        predicted = outputs["instance_id"][..., 0].long()
        gt = batch["gt_instance"][..., 0]
        predicted_ids |= set(predicted.unique().tolist()) - {0}
        for obj in gt.unique().tolist():
            pixels = predicted[gt == obj]
            if obj and len(pixels) >= 15:
                majority.setdefault(obj, []).append(int(pixels.mode().values))
    pairs = [(a, b) for ids in majority.values() for i, a in enumerate(ids) for b in ids[i + 1 :]]
    agreement = np.mean([a == b for a, b in pairs])
    chance = 1 / max(len(predicted_ids), 1)
    assert len(pairs) >= 10
    assert agreement > 0.7 and agreement > 4 * chance, (agreement, chance)


def test_pq_scene_clears_a_floor_and_beats_the_2d_segmenter(test_views, pipeline):
    things = pipeline.model.scene_classes.thing_ids

    def stack(source, key):
        return np.stack([(o if source == "out" else b)[key][..., 0].long().numpy() for o, b in test_views])

    gt = (stack("batch", "gt_semantics"), stack("batch", "gt_instance"))
    lifted = panoptic_quality(stack("out", "semantic_class"), stack("out", "instance_id"), *gt, thing_classes=things)
    segmenter = panoptic_quality(stack("batch", "semantics"), stack("batch", "segments"), *gt, thing_classes=things)
    assert lifted.pq > 0.5, lifted
    assert lifted.pq > segmenter.pq + 0.1


def test_colours_are_stable_across_renders_and_reclustering(pipeline, test_views):
    model = pipeline.model
    camera = pipeline.datamanager.eval_dataset.cameras[0:1].to(model.device)
    first = model.get_outputs_for_camera(camera)["instance"]
    assert torch.equal(first, model.get_outputs_for_camera(camera)["instance"])
    pipeline.recluster(seed=123)  # other sampled pixels, same objects
    again = model.get_outputs_for_camera(camera)["instance"]
    same = (again == first).all(-1).float().mean()
    assert same > 0.9, same


def test_cl_eval_writes_metrics_and_renders_that_match_an_independent_pq(trained_run, tmp_path):
    metrics_path, render_dir = tmp_path / "metrics.json", tmp_path / "renders"
    result = subprocess.run(
        [str(BIN / "cl-eval"), "--load-config", str(trained_run.config), "--output-path", str(metrics_path),
         "--render-dir", str(render_dir)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(metrics_path.read_text())
    for key in ("pq_scene", "sq_scene", "rq_scene", "pq_frame", "miou", "psnr", "segmenter_pq_frame",
                "segmenter_pq_scene", "num_objects_matched", "num_objects_pred", "num_objects_gt", "command", "config",
                "seconds"):  # fmt: skip
        assert key in metrics
    assert "pq_scene" in result.stdout
    # recompute PQ^scene from the written id maps and the scene's own ground-truth files
    meta = json.loads((trained_run.scene / "transforms.json").read_text())
    frames = {f["file_path"]: f for f in meta["frames"]}
    predicted_ids, predicted_classes, gt_ids, gt_classes = [], [], [], []
    for name in meta["test_filenames"]:
        stem = Path(name).stem
        ids = np.array(Image.open(render_dir / "instance" / f"{stem}.png"))
        assert ids.dtype == np.uint16
        predicted_ids.append(ids)
        predicted_classes.append(np.array(Image.open(render_dir / "semantics" / f"{stem}.png")))
        gt_ids.append(read_label_map(trained_run.scene / frames[name]["gt_instance_path"]))
        gt_classes.append(read_label_map(trained_run.scene / frames[name]["gt_semantics_path"]))
        assert (render_dir / "rgb" / f"{stem}.png").exists()
    independent = panoptic_quality(np.stack(predicted_classes), np.stack(predicted_ids), np.stack(gt_classes),
                                   np.stack(gt_ids), thing_classes=[1])  # fmt: skip
    assert independent.pq == pytest.approx(metrics["pq_scene"], abs=1e-9)
    # matched objects are ground-truth objects, not predicted ids (splits and strays add ids, never matches)
    assert metrics["num_objects_matched"] == independent.num_matched_segments
    assert metrics["num_objects_matched"] <= min(metrics["num_objects_gt"], metrics["num_objects_pred"])


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


def test_ns_eval_reports_pq_scene(trained_run, tmp_path):
    result = _run(BIN / "ns-eval", "--load-config", trained_run.config, "--output-path", tmp_path / "eval.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 < json.loads((tmp_path / "eval.json").read_text())["results"]["pq_scene"] <= 1


def test_cl_eval_without_ground_truth_reports_psnr_and_consistency(trained_run, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(trained_run.scene, scene)
    meta = json.loads((scene / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame.pop("gt_instance_path"), frame.pop("gt_semantics_path")
    (scene / "transforms.json").write_text(json.dumps(meta))
    config = yaml.load(trained_run.config.read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.data = config.pipeline.datamanager.dataparser.data = scene
    (tmp_path / "config.yml").write_text(yaml.dump(config))
    result = _run(BIN / "cl-eval", "--load-config", tmp_path / "config.yml", "--output-path", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gt_instance_path missing" in " ".join(result.stdout.split())
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (
        metrics["psnr"] > 10 and "pq_scene" not in metrics and metrics["missing_ground_truth"] == ["gt_instance_path"]
    )
    # the lifted ids agree across overlapping views more often than the 2D segments can, even matched per pair
    assert metrics["consistency_pairs"] >= 3
    assert metrics["consistency"] > metrics["segmenter_consistency"], metrics


def test_cl_eval_says_why_a_run_has_no_objects_and_what_is_missing(trained_run, tmp_path):
    scene = make_scene(
        MakeSceneConfig(output_dir=tmp_path / "scene", num_objects=2, num_views=8, resolution=16), progress=False
    )
    early = train_in_process(scene, tmp_path / "runs", max_steps=5, instance_loss_start_step=10**6)
    result = _run(BIN / "cl-eval", "--load-config", early, "--output-path", tmp_path / "m.json")
    assert result.returncode == 2 and "before the instance loss starts" in " ".join(result.stdout.split())
    assert not (tmp_path / "m.json").exists()

    folder = tmp_path / "metrics-folder"
    folder.mkdir()
    result = _run(BIN / "cl-eval", "--load-config", trained_run.config, "--output-path", folder)
    said = " ".join(result.stdout.split())  # the console wraps long paths
    assert result.returncode == 2 and "--output-path" in said and "is a folder" in said

    for checkpoint in (early.parent / "nerfstudio_models").glob("*.ckpt"):
        checkpoint.unlink()
    result = _run(BIN / "cl-eval", "--load-config", early, "--output-path", tmp_path / "m.json")
    assert result.returncode == 2 and "no checkpoint (step-*.ckpt)" in " ".join(result.stdout.split())

    moved = yaml.load(trained_run.config.read_text(), Loader=yaml.Loader)
    moved.pipeline.datamanager.data = tmp_path / "moved-away"
    (tmp_path / "moved.yml").write_text(yaml.dump(moved))
    result = _run(BIN / "cl-eval", "--load-config", tmp_path / "moved.yml", "--output-path", tmp_path / "m.json")
    assert result.returncode == 2 and "no longer exists" in " ".join(result.stdout.split())


def test_the_semantic_field_learns_the_small_objects(pipeline, trained_run):
    """The thing class's IoU on the training views: objects of 4-17 pixels must come out as objects."""
    model, dataset = pipeline.model, pipeline.datamanager.train_dataset
    frames = {f["file_path"]: f for f in json.loads((trained_run.scene / "transforms.json").read_text())["frames"]}
    intersection = union = 0
    for index, name in list(enumerate(dataset.metadata["frame_names"]))[::4]:
        outputs = model.get_outputs_for_camera(dataset.cameras[index : index + 1].to(model.device))
        predicted = outputs[Output.SEMANTIC_CLASS][..., 0].long().cpu() == 1
        truth = torch.from_numpy(read_label_map(trained_run.scene / frames[name]["gt_instance_path"])) > 0
        intersection += int((predicted & truth).sum())
        union += int((predicted | truth).sum())
    assert intersection / union > 0.6, intersection / union


def test_a_changed_class_list_is_named_instead_of_a_weight_mismatch(trained_run, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(trained_run.scene, scene)
    meta = json.loads((scene / "transforms.json").read_text())
    meta["semantic_classes"] = ["void", "background", "object"]  # as if cl-segment ran again with other classes
    meta["thing_classes"] = [2]
    (scene / "transforms.json").write_text(json.dumps(meta))
    config = yaml.load(trained_run.config.read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.data = config.pipeline.datamanager.dataparser.data = scene
    (tmp_path / "config.yml").write_text(yaml.dump(config))
    result = _run(BIN / "cl-eval", "--load-config", tmp_path / "config.yml", "--output-path", tmp_path / "m.json")
    message = " ".join(result.stdout.split())
    assert result.returncode == 2 and "semantic classes changed since training" in message, message[-2000:]
    assert "[background, object] (2 classes)" in message and "[void, background, object] (3 classes)" in message
