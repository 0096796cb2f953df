"""cl-export: the objects of a trained model, checked against the generated scene's ground truth.

Tolerances, for the shared 8-object scene (objects 4-25 cm across on a 0.94 m floor, 64 px views, 1200 steps):

- the number of exported objects is within ``COUNT_TOLERANCE`` of the number of ground-truth objects visible
  in the training views (covering at least ``GT_MIN_PIXELS`` pixels of some view);
- each exported centroid lies within ``max(CENTRE_FRACTION · largest side, CENTRE_FLOOR)`` of the centre of
  its nearest ground-truth object (the mean of the visible surface lies above an object's centre), its box
  lies inside that object's box grown by ``BOX_MARGIN``, and the exported objects find all but
  ``COUNT_TOLERANCE`` of the visible ground-truth objects;
- of the training views an object lists, at least 80 % show it in the ground truth, and it lists at least half
  of those where it covers ``GT_MIN_PIXELS`` pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import trimesh
import yaml
from plyfile import PlyData

from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig
from contrastive_lift_ns.data.scene_format import read_label_map
from contrastive_lift_ns.export.objects import find_objects
from contrastive_lift_ns.export.point_cloud import LabelledPoints, transform_points, vote_labels
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.scripts import export as export_script

from .conftest import train_in_process, write_flat_scene

CL_EXPORT = Path(sys.executable).parent / "cl-export"
NUM_POINTS = 40_000
COUNT_TOLERANCE = 2
GT_MIN_PIXELS = 10
CENTRE_FRACTION = 0.5
CENTRE_FLOOR = 0.05  # metres
BOX_MARGIN = 0.03  # metres


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CL_EXPORT), *args], capture_output=True, text=True, timeout=600)


def _gt_views(scene: Path) -> Dict[int, set]:
    """Ground-truth object id → the training views (file_path) where it covers at least GT_MIN_PIXELS pixels."""
    meta = json.loads((scene / "transforms.json").read_text())
    train = set(meta["train_filenames"])
    views: Dict[int, set] = {}
    for frame in meta["frames"]:
        if frame["file_path"] not in train:
            continue
        ids, counts = np.unique(read_label_map(scene / frame["gt_instance_path"]), return_counts=True)
        for object_id in ids[(ids > 0) & (counts >= GT_MIN_PIXELS)].tolist():
            views.setdefault(object_id, set()).add(frame["file_path"])
    return views


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "objects"
    result = _run("--load-config", str(trained_run.config), "--output-dir", str(out), "--num-points", str(NUM_POINTS))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.slow
def test_exported_objects_match_the_ground_truth_objects(exported, trained_run):
    table = json.loads((exported / "objects.json").read_text())
    objects = table["objects"]
    gt_views = _gt_views(trained_run.scene)
    gt = {o["id"]: o for o in json.loads((trained_run.scene / "transforms.json").read_text())["scene_objects"]}
    assert abs(len(objects) - len(gt_views)) <= COUNT_TOLERANCE, (len(objects), sorted(gt_views))

    matched: List[int] = []
    for row in objects:
        assert row["class_name"] == "object" and row["num_points"] >= 50
        low, centroid, high = (np.array(row[key]) for key in ("bbox_min", "centroid", "bbox_max"))
        assert (low <= centroid).all() and (centroid <= high).all()
        distances = {i: np.linalg.norm(np.subtract(row["centroid"], o["center"])) for i, o in gt.items()}
        nearest = min(distances, key=distances.get)
        bound = max(CENTRE_FRACTION * max(gt[nearest]["size"]), CENTRE_FLOOR)
        assert distances[nearest] < bound, (row["id"], nearest, distances[nearest], bound)
        assert (low >= np.array(gt[nearest]["bbox_min"]) - BOX_MARGIN).all(), (row, gt[nearest])
        assert (high <= np.array(gt[nearest]["bbox_max"]) + BOX_MARGIN).all(), (row, gt[nearest])
        matched.append(nearest)
        listed, seen = set(row["views"]), gt_views.get(nearest, set())
        assert len(listed & seen) >= 0.8 * len(listed), (row["id"], sorted(listed - seen))
        assert len(listed & seen) >= 0.5 * len(seen), (row["id"], sorted(seen - listed))
    assert len(set(matched)) >= len(gt_views) - COUNT_TOLERANCE, f"ground-truth objects matched: {matched}"


@pytest.mark.slow
def test_ply_files_load_in_plyfile_and_trimesh(exported):
    table = json.loads((exported / "objects.json").read_text())
    scene = PlyData.read(str(exported / "scene.ply"))
    vertex = scene["vertex"]
    assert scene.byte_order == "<" and not scene.text
    assert [p.name for p in vertex.properties] == ["x", "y", "z", "red", "green", "blue", "instance", "semantic_class"]
    assert len(vertex) == table["num_points"]
    ids = {o["id"] for o in table["objects"]}
    assert set(np.unique(vertex["instance"]).tolist()) <= ids | {0}
    assert sorted(int(p.stem) for p in (exported / "objects").glob("*.ply")) == sorted(ids)

    cloud = trimesh.load(exported / "scene.ply")
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], 1)
    rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], 1)
    np.testing.assert_allclose(np.asarray(cloud.vertices), xyz, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], rgb)

    for row in table["objects"]:
        path = exported / "objects" / f"{row['id']}.ply"
        mesh = trimesh.load(path)
        assert isinstance(mesh, trimesh.PointCloud) and len(mesh.vertices) == row["num_points"]
        np.testing.assert_allclose(mesh.vertices.mean(0), row["centroid"], atol=1e-4)
        assert set(PlyData.read(str(path))["vertex"]["instance"].tolist()) == {row["id"]}


@pytest.mark.slow
def test_an_unknown_object_id_is_an_error_and_writes_nothing(trained_run, tmp_path):
    result = _run("--load-config", str(trained_run.config), "--output-dir", str(tmp_path / "out"), "--objects", "999")
    assert result.returncode == 2
    message = " ".join((result.stdout + result.stderr).split())
    assert "--objects: no object 999 in this model; its objects are" in message
    assert list(tmp_path.iterdir()) == []  # no output folder, no temporary one


@pytest.mark.slow
def test_the_objects_flag_restricts_objects_and_the_table(exported, trained_run, tmp_path):
    some = [o["id"] for o in json.loads((exported / "objects.json").read_text())["objects"]][:2]
    out = tmp_path / "some"
    export_script.ExportConfig(
        load_config=trained_run.config, output_dir=out, num_points=4000, min_points=1, objects=",".join(map(str, some))
    ).main()
    assert [o["id"] for o in json.loads((out / "objects.json").read_text())["objects"]] == some
    assert sorted(int(p.stem) for p in (out / "objects").glob("*.ply")) == sorted(some)


@pytest.mark.slow
def test_a_failed_export_leaves_no_output(trained_run, tmp_path, monkeypatch):
    written = []

    def fail_on_the_second_file(path: Path, *args, **kwargs) -> None:
        written.append(path)
        if len(written) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(export_script, "write_ply", fail_on_the_second_file)
    config = export_script.ExportConfig(load_config=trained_run.config, output_dir=tmp_path / "out", num_points=2000)
    with pytest.raises(OSError, match="disk full"):
        config.main()
    assert len(written) == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_model_without_objects_is_an_error_that_says_what_to_do(tmp_path):
    scene = make_scene(
        MakeSceneConfig(output_dir=tmp_path / "scene", num_objects=2, num_views=4, resolution=16), progress=False
    )
    config = train_in_process(scene, tmp_path / "runs", max_steps=2, instance_loss_start_step=10**6)
    out = tmp_path / "out"
    with pytest.raises(export_script.ExportError, match="before the instance loss starts.*train longer"):
        export_script.ExportConfig(load_config=config, output_dir=out).main()

    # The same run, as if its instance loss had started but it had never been clustered.
    trainer = yaml.load(config.read_text(), Loader=yaml.Loader)
    trainer.pipeline.model.instance_loss_start_step = 0
    unclustered = tmp_path / "unclustered.yml"
    unclustered.write_text(yaml.dump(trainer))
    with pytest.raises(export_script.ExportError, match="never clustered.*train longer.*--recluster"):
        export_script.ExportConfig(load_config=unclustered, output_dir=out).main()
    assert not out.exists()


def test_cl_export_needs_no_system_library():
    """Open3D needs libusb-1.0 at import, which a minimal Debian lacks; the export uses none of it."""
    code = (
        "import sys; sys.modules['open3d'] = None; sys.argv = ['cl-export', '--help']\n"
        "from contrastive_lift_ns.scripts.export import entrypoint\nentrypoint()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--num-points" in result.stdout, result.stderr[-2000:]


def test_points_map_back_to_the_coordinates_of_the_transforms_json_poses(tmp_path):
    """Camera centres go through nerfstudio's normalisation and back, with a rotated, shifted world and an
    ``applied_transform``/``applied_scale`` in transforms.json, which nerfstudio folds into its transform."""
    root = write_flat_scene(tmp_path / "scene", frames=6)
    meta = json.loads((root / "transforms.json").read_text())
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0].double().numpy()
    for frame in meta["frames"]:
        pose = np.array(frame["transform_matrix"])
        pose[:3] = rotation @ pose[:3]
        pose[:3, 3] += [5.0, -2.0, 0.5]
        frame["transform_matrix"] = pose.tolist()
    meta["applied_transform"] = [[0, 1, 0, 0.3], [1, 0, 0, -2.0], [0, 0, -1, 0.5]]
    meta["applied_scale"] = 2.5
    (root / "transforms.json").write_text(json.dumps(meta))

    outputs = ContrastiveLiftDataParserConfig(data=root).setup().get_dataparser_outputs("train")
    world = transform_points(outputs.metadata["to_poses"], outputs.cameras.camera_to_worlds[:, :, 3].double().numpy())
    poses = np.array([f["transform_matrix"] for f in meta["frames"]])[:, :3, 3]
    np.testing.assert_allclose(world, poses[: len(world)], atol=1e-4)


def test_objects_drop_detached_patches_and_small_objects_and_list_their_views():
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(500, 3))
    sphere = [0.5, 0.0, 0.1] + 0.1 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    patch = rng.uniform([0.0, 0.0, 0.0], [0.02, 0.02, 0.002], (40, 3))  # id 1 bled onto another surface
    speck = rng.uniform(-0.01, 0.01, (10, 3)) + [0.0, 0.5, 0.0]  # an object too small to keep
    xyz = np.concatenate([sphere, patch, speck])
    instance = np.r_[np.ones(540, dtype=np.int64), np.full(10, 2)]
    view = np.r_[np.zeros(300, dtype=np.int64), np.ones(248, dtype=np.int64), np.full(2, 2)]  # sphere: views 0, 1
    n = len(xyz)
    points = LabelledPoints(xyz, np.zeros((n, 3), np.uint8), instance, np.ones(n, dtype=np.int64), view)

    objects, relabelled = find_objects(points, ["background", "object"], ["a.png", "b.png", "c.png"], 20, 5)
    assert [(o.id, o.num_points, o.class_name, o.views) for o in objects] == [(1, 500, "object", ["a.png", "b.png"])]
    np.testing.assert_allclose(objects[0].bbox_min, sphere.min(0), atol=1e-6)
    np.testing.assert_allclose(objects[0].bbox_max, sphere.max(0), atol=1e-6)
    assert np.array_equal(relabelled.instance, np.r_[np.ones(500), np.zeros(50)])


def test_points_take_the_labels_most_of_their_neighbours_have():
    """A few grazing rays of one view label spots of a surface that the other views label otherwise."""
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0, 1, (4000, 2)), np.zeros(4000)]
    instance = np.where(xyz[:, 0] < 0.5, 3, 0)  # object 3 on the left, floor on the right
    semantic_class = np.where(instance > 0, 1, 0)
    grazing = (xyz[:, 0] > 0.6) & (xyz[:, 0] < 0.7) & (rng.random(4000) < 0.25)
    noisy_instance, noisy_class = np.where(grazing, 3, instance), np.where(grazing, 1, semantic_class)
    n = len(xyz)
    points = LabelledPoints(xyz, np.zeros((n, 3), np.uint8), noisy_instance, noisy_class, np.zeros(n, dtype=np.int64))
    voted = vote_labels(points)
    assert grazing.sum() > 50 and (voted.instance[grazing] == 0).all() and (voted.semantic_class[grazing] == 0).all()
    away_from_the_edge = np.abs(xyz[:, 0] - 0.5) > 0.05
    assert np.array_equal(voted.instance[away_from_the_edge], instance[away_from_the_edge])


def test_an_unwritable_output_folder_is_named_before_any_rendering(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = export_script.ExportConfig(load_config=tmp_path / "no-such-run.yml", output_dir=blocker / "exports")
    with pytest.raises(
        export_script.RunError, match=f"--output-dir {blocker / 'exports'}: {blocker} is a file"
    ) as error:
        config.main()  # before the run is even looked at
    assert ".tmp-" not in str(error.value)
