"""The ``messy-rooms`` and ``panoptic-lifting`` dataparsers, on a generated scene written in each paper layout.

The same scene parses to the same cameras and labels in the project's format and in either layout; ``ns-train``
trains through both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig
from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.messy_rooms import MessyRoomsDataParserConfig
from contrastive_lift_ns.data.panoptic_lifting import REDUCED_SCANNET_THINGS, PanopticLiftingDataParserConfig
from contrastive_lift_ns.data.scene_format import SceneFormatError, read_confidence, read_label_map, write_label_map
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene

NS_TRAIN = Path(sys.executable).parent / "ns-train"
CHAIR, FLOOR = 5, 2  # reduced-ScanNet classes that stand in for the scene's object and background
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def _frames(scene: Path) -> list:
    """The scene's frames with their number as the paper layouts name them ("frame_00003.png" -> "3")."""
    frames = json.loads((scene / "transforms.json").read_text())["frames"]
    return [(str(int(Path(f["file_path"]).stem.split("_")[1])), f) for f in frames]


def write_messy_rooms(scene: Path, root: Path) -> Path:
    """The scene in the Messy Rooms layout: RGBA colour, normalised K (Blender's negative fy), w-x-y-z quaternions."""
    meta = json.loads((scene / "transforms.json").read_text())
    width, height = meta["w"], meta["h"]
    for folder in ("color", "depth", "detic_instance", "detic_semantic", "detic_probabilities", "instance", "semantic"):
        (root / folder).mkdir(parents=True)
    positions, quaternions = [], []
    for name, frame in sorted(_frames(scene), key=lambda item: int(item[0])):
        Image.open(scene / frame["file_path"]).convert("RGBA").save(root / f"color/{name}.png")
        shutil.copy(scene / frame["depth_file_path"], root / f"depth/{name}.png")  # both in 16-bit millimetres
        pose = np.array(frame["transform_matrix"])
        positions.append(pose[:3, 3].tolist())
        quaternions.append(np.roll(Rotation.from_matrix(pose[:3, :3]).as_quat(), 1).tolist())
        np.save(root / f"detic_instance/{name}.npy", read_label_map(scene / frame["segments_path"]).astype(np.int16))
        np.save(root / f"detic_semantic/{name}.npy", read_label_map(scene / frame["semantics_path"]))
        np.save(root / f"detic_probabilities/{name}.npy", read_confidence(scene / frame["confidence_path"]))
        np.save(root / f"instance/{name}.npy", read_label_map(scene / frame["gt_instance_path"]))
        np.save(root / f"semantic/{name}.npy", read_label_map(scene / frame["gt_semantics_path"]))
    k = [[meta["fl_x"] / width, 0, meta["cx"] / width], [0, -meta["fl_y"] / height, meta["cy"] / height], [0, 0, 1]]
    camera = {"K": k, "positions": positions, "quaternions": quaternions}
    (root / "metadata.json").write_text(json.dumps({"camera": camera}))
    return root


def write_panoptic_lifting(scene: Path, root: Path) -> Path:
    """The scene in Panoptic Lifting's layout: OpenCV poses, 4×4 K, object -> chair, background -> floor."""
    meta = json.loads((scene / "transforms.json").read_text())
    folders = ("color", "pose", "intrinsic", "m2f_instance", "m2f_semantics", "m2f_probabilities", "rs_instance")
    for folder in (*folders, "rs_semantics", "depth"):
        (root / folder).mkdir(parents=True)
    intrinsics = np.eye(4)
    intrinsics[:3, :3] = [[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1]]
    np.savetxt(root / "intrinsic/intrinsic_color.txt", intrinsics)
    splits: Dict[str, list] = {"train": [], "test": []}
    for index, (name, frame) in enumerate(_frames(scene)):
        Image.open(scene / frame["file_path"]).convert("RGB").save(root / f"color/{name}.jpg", quality=95)
        np.savetxt(root / f"pose/{name}.txt", np.array(frame["transform_matrix"]) @ OPENGL_TO_OPENCV)
        shutil.copy(scene / frame["depth_file_path"], root / f"depth/{name}.png")
        write_label_map(root / f"m2f_instance/{name}.png", read_label_map(scene / frame["segments_path"]), True)
        semantics = read_label_map(scene / frame["semantics_path"])
        write_label_map(root / f"m2f_semantics/{name}.png", np.where(semantics == 1, CHAIR, FLOOR))
        confidence = read_confidence(scene / frame["confidence_path"])
        np.savez_compressed(
            root / f"m2f_probabilities/{name}.npz", probability=np.zeros((*confidence.shape, 22)), confidence=confidence
        )
        instance = read_label_map(scene / frame["gt_instance_path"])
        write_label_map(root / f"rs_instance/{name}.png", instance)
        write_label_map(root / f"rs_semantics/{name}.png", np.where(instance > 0, CHAIR, FLOOR))
        # splits.json names frames by stem or by file name; both must work
        (splits["test"].append(f"{name}.jpg") if index % 4 == 0 else splits["train"].append(name))
    (root / "splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    scene = make_scene(
        MakeSceneConfig(output_dir=root / "scene", num_objects=5, num_views=16, resolution=48, seed=3), progress=False
    )
    return {
        "scene": scene,
        "messy-rooms": write_messy_rooms(scene, root / "messy-rooms"),
        "panoptic-lifting": write_panoptic_lifting(scene, root / "panoptic-lifting"),
    }


PARSERS: Dict[str, Callable] = {
    "scene": ContrastiveLiftDataParserConfig,
    "messy-rooms": MessyRoomsDataParserConfig,
    "panoptic-lifting": PanopticLiftingDataParserConfig,
}


def _by_frame(data: Path, kind: str) -> Dict[str, dict]:
    """Every frame of the train and test splits, keyed by its number: camera, labels, and the split it is in."""
    frames = {}
    for split in ("train", "test"):
        outputs = PARSERS[kind](data=data).setup().get_dataparser_outputs(split)
        dataset = ContrastiveLiftDataset(outputs)
        for index, path in enumerate(outputs.image_filenames):
            name = str(int(Path(path).stem.split("_")[-1]))
            camera = outputs.cameras[index]
            frames[name] = {
                "split": split,
                "c2w": camera.camera_to_worlds,
                "intrinsics": torch.cat([camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height]),
                "outputs": outputs,
                **dataset[index],
            }
    return frames


def _assert_same_cameras(ours: Dict[str, dict], theirs: Dict[str, dict]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert torch.allclose(theirs[name]["c2w"], ours[name]["c2w"], atol=1e-5), name
        assert torch.allclose(theirs[name]["intrinsics"], ours[name]["intrinsics"].float(), atol=1e-4), name
    first_ours, first_theirs = next(iter(ours.values()))["outputs"], next(iter(theirs.values()))["outputs"]
    assert first_theirs.dataparser_scale == pytest.approx(first_ours.dataparser_scale, rel=1e-5)
    assert torch.allclose(first_theirs.dataparser_transform, first_ours.dataparser_transform, atol=1e-5)


def test_messy_rooms_layout_parses_to_the_same_cameras_and_labels(layouts):
    ours, theirs = _by_frame(layouts["scene"], "scene"), _by_frame(layouts["messy-rooms"], "messy-rooms")
    _assert_same_cameras(ours, theirs)
    # the last 20 % of the frames, numerically sorted (10-15 would sort before 2 by name), are the test split
    assert sorted(int(n) for n, f in theirs.items() if f["split"] == "test") == [12, 13, 14, 15]
    assert theirs["0"]["outputs"].metadata["scene_classes"] == ours["0"]["outputs"].metadata["scene_classes"]
    for name in ours:
        for key in ("image", "segments", "semantics", "confidence"):
            assert torch.equal(theirs[name][key], ours[name][key]), (name, key)
        assert torch.allclose(theirs[name]["depth_image"], ours[name]["depth_image"], rtol=1e-5), name
    for name, frame in _frames(layouts["scene"]):
        if theirs[name]["split"] == "test":
            gt = torch.from_numpy(read_label_map(layouts["scene"] / frame["gt_instance_path"]))[..., None]
            assert torch.equal(theirs[name]["gt_instance"], gt)
            assert torch.equal(theirs[name]["gt_semantics"], (gt > 0).long())
        else:
            assert "gt_instance" not in theirs[name]  # ground truth never reaches training


def test_panoptic_lifting_layout_parses_to_the_same_cameras_and_labels(layouts):
    ours = _by_frame(layouts["scene"], "scene")
    theirs = _by_frame(layouts["panoptic-lifting"], "panoptic-lifting")
    _assert_same_cameras(ours, theirs)
    assert sorted(int(n) for n, f in theirs.items() if f["split"] == "test") == [0, 4, 8, 12]
    classes = theirs["0"]["outputs"].metadata["scene_classes"]
    assert classes.names[CHAIR] == "chair" and classes.thing_ids == REDUCED_SCANNET_THINGS and classes.void_id == 0
    assert len(classes.names) == 22 and classes.names[14] == "refrigerator" and classes.names[20] == "bag"
    for name in ours:
        assert torch.equal(theirs[name]["segments"], ours[name]["segments"])
        assert torch.equal(theirs[name]["semantics"], torch.where(ours[name]["semantics"] == 1, CHAIR, FLOOR))
        assert torch.equal(theirs[name]["confidence"], ours[name]["confidence"])
        assert torch.allclose(theirs[name]["depth_image"], ours[name]["depth_image"], rtol=1e-5), name
        if theirs[name]["split"] == "test":
            assert ((theirs[name]["gt_semantics"] == CHAIR) == (theirs[name]["gt_instance"] > 0)).all()
    val = PanopticLiftingDataParserConfig(data=layouts["panoptic-lifting"]).setup().get_dataparser_outputs("val")
    assert [p.stem for p in val.image_filenames] == ["0", "4", "8", "12"]


def test_label_maps_of_another_resolution_are_resized_but_not_of_another_shape(layouts, tmp_path):
    data = Path(shutil.copytree(layouts["panoptic-lifting"], tmp_path / "pl"))
    instance = read_label_map(data / "m2f_instance/1.png")
    write_label_map(data / "m2f_instance/1.png", instance[::2, ::2])  # ScanNet's labels are smaller than its colour
    outputs = PanopticLiftingDataParserConfig(data=data).setup().get_dataparser_outputs("train")
    item = ContrastiveLiftDataset(outputs)[[p.stem for p in outputs.image_filenames].index("1")]
    assert item["segments"].shape == (48, 48, 1)
    assert torch.equal(item["segments"][::2, ::2, 0], torch.from_numpy(instance[::2, ::2]))
    write_label_map(data / "m2f_instance/1.png", instance[:, :30])
    with pytest.raises(SceneFormatError, match=r"m2f_instance/1\.png: segments map is 30×48 .* 48×48 image"):
        PanopticLiftingDataParserConfig(data=data).setup().get_dataparser_outputs("train")


@pytest.mark.parametrize("layout", ["messy-rooms", "panoptic-lifting"])
def test_depth_is_optional_and_may_be_smaller_than_the_images(layouts, tmp_path, layout):
    data = Path(shutil.copytree(layouts[layout], tmp_path / layout))
    depth = np.asarray(Image.open(data / "depth/1.png"))
    Image.fromarray(depth[::2, ::2]).save(data / "depth/1.png")  # ScanNet's depth is smaller than its colour
    outputs = PARSERS[layout](data=data).setup().get_dataparser_outputs("train")
    item = ContrastiveLiftDataset(outputs)[[p.stem for p in outputs.image_filenames].index("1")]
    assert item["depth_image"].shape == (48, 48, 1)
    shutil.rmtree(data / "depth")
    outputs = PARSERS[layout](data=data).setup().get_dataparser_outputs("train")
    assert outputs.metadata["depth_filenames"] is None and "depth_image" not in ContrastiveLiftDataset(outputs)[0]


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "layout, breakage, message",
    [
        (
            "messy-rooms",
            lambda d: _edit_json(d / "metadata.json", lambda m: m["camera"]["positions"].pop()),
            r"metadata\.json: 15 positions and 16 quaternions for 16 images",
        ),
        ("messy-rooms", lambda d: shutil.rmtree(d / "detic_instance"), r"detic_instance: no such folder"),
        ("messy-rooms", lambda d: (d / "detic_instance/7.npy").unlink(), r"detic_instance/7\.npy: file not found"),
        ("panoptic-lifting", lambda d: (d / "depth/6.png").unlink(), r"depth/6\.png: file not found"),
        (
            "panoptic-lifting",
            lambda d: _edit_json(d / "splits.json", lambda s: s["test"].append("99")),
            r"splits\.json: 'test' names frame '99'",
        ),
        (
            "panoptic-lifting",
            lambda d: (d / "pose/3.txt").write_text("-inf " * 16),
            r"pose/3\.txt: expected a 4×4 matrix",
        ),
        (
            "panoptic-lifting",
            lambda d: np.savetxt(d / "pose/3.txt", np.full((4, 4), -np.inf)),
            r"pose/3\.txt: holds non-finite values",
        ),
        ("panoptic-lifting", lambda d: (d / "splits.json").unlink(), r"splits\.json: not found"),
    ],
)
def test_bad_layouts_get_errors_naming_the_file(layouts, tmp_path, layout, breakage, message):
    data = Path(shutil.copytree(layouts[layout], tmp_path / layout))
    breakage(data)
    with pytest.raises(SceneFormatError, match=message):
        PARSERS[layout](data=data).setup().get_dataparser_outputs("train")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["messy-rooms", "panoptic-lifting"])
def test_ns_train_trains_and_cl_export_exports_on_a_paper_layout(layouts, tmp_path, layout):
    args = [
        "contrastive-lift-small", "--output-dir", str(tmp_path), "--experiment-name", "e", "--timestamp", "t",
        "--vis", "tensorboard", "--max-num-iterations", "4", "--steps-per-save", "4",
        "--pipeline.model.semantic-loss-start-step", "1", "--pipeline.model.instance-loss-start-step", "2",
        "--pipeline.model.clustering.num-pixels", "500", layout, "--data", str(layouts[layout]),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([str(NS_TRAIN), *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "e/contrastive-lift-small/t"
    assert (run / "nerfstudio_models/step-000000003.ckpt").exists()

    out = tmp_path / "export"
    export = [str(NS_TRAIN.parent / "cl-export"), "--load-config", str(run / "config.yml"), "--output-dir", str(out)]
    export += ["--num-points", "3000", "--min-points", "1", "--no-crop"]
    result = subprocess.run(export, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = json.loads((out / "objects.json").read_text())
    views = {view for row in table["objects"] for view in row["views"]}
    assert table["num_points"] > 0 and views <= {
        p.relative_to(layouts[layout]).as_posix() for p in layouts[layout].rglob("*.*")
    }
