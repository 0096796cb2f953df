"""cl-make-scene: scenes render, ground truth is multi-view consistent, the simulated segmenter is not and its
measured error rates follow the flags, output is deterministic and complete, bad flags fail cleanly."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt

from contrastive_lift_ns.data.scene_format import (
    GT_INSTANCE_KEY,
    SEGMENTS_KEY,
    SEMANTICS_KEY,
    read_confidence,
    read_label_map,
)
from contrastive_lift_ns.generator.raycast import Renderer
from contrastive_lift_ns.generator.room import CAMERA_LAYOUTS, make_room
from contrastive_lift_ns.generator.segmenter_noise import PRESETS, SegmenterNoiseConfig, simulate_segments
from contrastive_lift_ns.generator.writer import MakeSceneConfig, MakeSceneError, make_scene
from contrastive_lift_ns.scripts.make_scene import entrypoint

CLEAN = PRESETS["clean"]


@pytest.fixture(scope="module")
def scene5(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "five"
    return make_scene(MakeSceneConfig(output_dir=out, num_objects=5, num_views=12, resolution=96), progress=False)


@pytest.fixture(scope="module")
def views25():
    """Ground truth of a 25-object room, for measuring the simulated segmenter directly."""
    renderer = Renderer(make_room(num_objects=25, num_views=10, resolution=128, seed=7))
    return [renderer.render(i) for i in range(10)]


def _meta(scene: Path) -> dict:
    return json.loads((scene / "transforms.json").read_text())


def _correspondences(scene: Path, a: int, b: int):
    """Pixels of view a (away from id boundaries) and where they land in view b, where b sees the same point."""
    meta = _meta(scene)
    fa, fb = meta["frames"][a], meta["frames"][b]
    f, cx, cy, size = meta["fl_x"], meta["cx"], meta["cy"], meta["w"]
    depth_a = np.asarray(Image.open(scene / fa["depth_file_path"]), dtype=np.float64) / 1000
    depth_b = np.asarray(Image.open(scene / fb["depth_file_path"]), dtype=np.float64) / 1000
    gt_a = read_label_map(scene / fa[GT_INSTANCE_KEY])
    padded = np.pad(gt_a, 1, mode="edge")
    interior = np.all(
        [padded[1 + dy : 1 + dy + size, 1 + dx : 1 + dx + size] == gt_a for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0
    )
    ys, xs = np.nonzero((depth_a > 0) & interior)
    z = depth_a[ys, xs]
    cam = np.stack([(xs + 0.5 - cx) / f * z, -(ys + 0.5 - cy) / f * z, -z, np.ones_like(z)])
    in_b = np.linalg.inv(np.array(fb["transform_matrix"])) @ np.array(fa["transform_matrix"]) @ cam
    zb = -in_b[2]
    ub = np.rint(f * in_b[0] / np.maximum(zb, 1e-9) + cx - 0.5).astype(int)
    vb = np.rint(-f * in_b[1] / np.maximum(zb, 1e-9) + cy - 0.5).astype(int)
    inside = (zb > 0) & (ub >= 0) & (ub < size) & (vb >= 0) & (vb < size)
    ys, xs, ub, vb, zb = ys[inside], xs[inside], ub[inside], vb[inside], zb[inside]
    seen = np.abs(depth_b[vb, ub] - zb) < 0.01 + 0.01 * zb  # not occluded in b
    return (ys[seen], xs[seen]), (vb[seen], ub[seen])


def test_five_object_scene_renders(scene5):
    meta = _meta(scene5)
    assert len(meta["frames"]) == 12 and len(meta["scene_objects"]) == 5
    assert meta["semantic_classes"] == ["background", "object"] and meta["thing_classes"] == [1]
    rgb = np.asarray(Image.open(scene5 / meta["frames"][0]["file_path"]))
    assert rgb.shape == (96, 96, 3) and rgb.std() > 10
    pixels = np.zeros(6)
    for frame in meta["frames"]:
        gt = read_label_map(scene5 / frame[GT_INSTANCE_KEY])
        pixels += np.bincount(gt.ravel(), minlength=6) / len(meta["frames"])
        depth = np.asarray(Image.open(scene5 / frame["depth_file_path"]))
        assert depth.dtype == np.uint16 and (depth[gt > 0] > 0).all()
    assert (pixels[1:] > 40).all(), f"objects too small at 96 px: mean pixels per view {pixels[1:]}"
    for obj in meta["scene_objects"]:
        assert np.allclose(np.add(obj["bbox_min"], obj["bbox_max"]) / 2, obj["center"], atol=1e-5)
        assert 0.05 < max(obj["size"]) < 0.35 and abs(obj["bbox_min"][2]) < 1e-4  # resting on the floor


def test_every_path_exists_and_splits_are_sane(scene5):
    meta = _meta(scene5)
    names = [frame["file_path"] for frame in meta["frames"]]
    for frame in meta["frames"]:
        for key, value in frame.items():
            if key.endswith("path"):
                assert (scene5 / value).is_file(), value
    train, test = meta["train_filenames"], meta["test_filenames"]
    assert set(train) | set(test) == set(names) and not set(train) & set(test)
    assert len(train) > len(test) > 0 and set(meta["val_filenames"]) <= set(names)


def test_ground_truth_ids_agree_across_views(scene5):
    meta = _meta(scene5)
    checked = 0
    for a, b in [(0, 1), (2, 7), (5, 11), (3, 9)]:
        (ya, xa), (yb, xb) = _correspondences(scene5, a, b)
        gt_a = read_label_map(scene5 / meta["frames"][a][GT_INSTANCE_KEY])[ya, xa]
        gt_b = read_label_map(scene5 / meta["frames"][b][GT_INSTANCE_KEY])[yb, xb]
        on_object = gt_a > 0
        assert on_object.sum() > 50
        assert (gt_a[on_object] == gt_b[on_object]).mean() > 0.97
        checked += on_object.sum()
    assert checked > 500


def test_segmenter_ids_disagree_across_views(scene5):
    meta = _meta(scene5)
    agree = []
    for a, b in [(0, 1), (2, 7), (5, 11)]:
        (ya, xa), (yb, xb) = _correspondences(scene5, a, b)
        sa = read_label_map(scene5 / meta["frames"][a][SEGMENTS_KEY])[ya, xa]
        sb = read_label_map(scene5 / meta["frames"][b][SEGMENTS_KEY])[yb, xb]
        both = (sa > 0) & (sb > 0)
        agree.append((sa[both] == sb[both]).mean())
    assert np.mean(agree) < 0.2


def test_nerfstudio_dataparser_reads_scene(scene5):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    meta = _meta(scene5)
    parser = NerfstudioDataParserConfig(data=scene5).setup()
    train = parser.get_dataparser_outputs("train")
    test = parser.get_dataparser_outputs("test")
    assert len(train.image_filenames) == len(meta["train_filenames"])
    assert len(test.image_filenames) == len(meta["test_filenames"])
    assert train.metadata["depth_filenames"] is not None


def _segments(view, config, seed):
    return simulate_segments(view.instance, view.unoccluded, config, np.random.default_rng(seed))


def _per_object(view, ids):
    """For each visible object: its visible area and how many distinct segment ids cover it."""
    out = []
    for obj in np.unique(view.instance[view.instance > 0]):
        seg = ids[view.instance == obj]
        out.append((seg.size, len(np.unique(seg[seg > 0]))))
    return np.array(out)


def test_clean_segments_are_relabelled_ground_truth(views25):
    for i, view in enumerate(views25[:3]):
        seg = _segments(view, CLEAN, i).ids
        pairs = np.unique(np.stack([view.instance.ravel(), seg.ravel()], 1), axis=0)
        assert len(pairs) == len(np.unique(view.instance)) == len(np.unique(seg))  # a bijection
        assert ((seg > 0) == (view.instance > 0)).all()


def test_miss_rate_matches_flag_and_hits_small_objects(views25):
    missed, areas = [], []
    for i, view in enumerate(views25):
        for rep in range(4):
            stats = _per_object(view, _segments(view, replace(CLEAN, miss_rate=0.3), [i, rep]).ids)
            missed.append(stats[:, 1] == 0)
            areas.append(stats[:, 0])
    missed, areas = np.concatenate(missed), np.concatenate(areas)
    assert abs(missed.mean() - 0.3) < 0.06
    assert np.median(areas[missed]) < np.median(areas[~missed])


def test_over_segmentation_rate_matches_flag(views25):
    split = []
    for i, view in enumerate(views25):
        for rep in range(4):
            stats = _per_object(view, _segments(view, replace(CLEAN, over_segment_rate=0.4), [i, rep]).ids)
            split.append(stats[stats[:, 0] >= 32, 1] > 1)
    assert abs(np.concatenate(split).mean() - 0.4) < 0.07


def test_under_segmentation_merges_touching_objects(views25):
    merged = []
    for i, view in enumerate(views25):
        gt = view.instance
        a = np.concatenate([gt[:, :-1].ravel(), gt[:-1].ravel()])
        b = np.concatenate([gt[:, 1:].ravel(), gt[1:].ravel()])
        edge = (a != b) & (a > 0) & (b > 0)
        codes, counts = np.unique(
            np.minimum(a[edge], b[edge]) * 1000 + np.maximum(a[edge], b[edge]), return_counts=True
        )
        pairs = np.stack(np.divmod(codes[counts >= 3], 1000), 1)
        for rep in range(8):
            ids = _segments(view, replace(CLEAN, under_segment_rate=0.3), [i, rep]).ids
            label = {obj: ids[gt == obj][0] for obj in np.unique(pairs)}
            merged += [label[p] == label[q] for p, q in pairs]
    assert len(merged) > 100
    # Chains of merges can join pairs that were not drawn, so the measured rate is a little higher.
    assert 0.24 < np.mean(merged) < 0.42


def test_false_positive_count_matches_flag(views25):
    counts = []
    for i, view in enumerate(views25):
        for rep in range(5):
            ids = _segments(view, replace(CLEAN, false_positives=2.0), [i, rep]).ids
            background = [np.mean(view.instance[ids == s] == 0) for s in np.unique(ids[ids > 0])]
            counts.append(sum(share > 0.99 for share in background))
    assert abs(np.mean(counts) - 2.0) < 0.5


def test_boundary_errors_stay_near_boundaries(views25):
    view = views25[0]
    gt = view.instance
    seg = _segments(view, replace(CLEAN, boundary_px=2.0), 0).ids
    majority = {s: np.bincount(gt[seg == s]).argmax() for s in np.unique(seg)}
    wrong = np.vectorize(majority.get)(seg) != gt
    boundary = np.zeros_like(gt, dtype=bool)
    boundary[:, 1:] |= gt[:, 1:] != gt[:, :-1]
    boundary[1:] |= gt[1:] != gt[:-1]
    assert wrong.any() and wrong.mean() < 0.1
    assert distance_transform_edt(~boundary)[wrong].max() <= 3.0


def test_confidence_is_lower_where_the_segmenter_errs(views25):
    right, wrong = [], []
    for i, view in enumerate(views25):
        seg = _segments(view, replace(PRESETS["hard"], boundary_px=0.0), i)
        gt, ids = view.instance, seg.ids
        # Right: background left empty, or an object covered by exactly one segment that covers nothing else.
        pairs = np.unique(np.stack([gt.ravel(), ids.ravel()], 1), axis=0)
        segments_per_object = np.bincount(pairs[:, 0], minlength=gt.max() + 1)
        objects_per_segment = np.bincount(pairs[:, 1], minlength=ids.max() + 1)
        ok = np.where(gt == 0, ids == 0, (ids > 0) & (segments_per_object[gt] == 1) & (objects_per_segment[ids] == 1))
        right.append(seg.confidence[ok])
        wrong.append(seg.confidence[~ok])
    assert np.concatenate(wrong).size > 1000
    assert np.concatenate(wrong).mean() < np.concatenate(right).mean() - 0.2


def test_same_seed_gives_identical_bytes(tmp_path):
    config = MakeSceneConfig(output_dir=tmp_path / "a", num_objects=6, num_views=4, resolution=48, seed=3, preview=True)
    make_scene(config, progress=False)
    make_scene(replace(config, output_dir=tmp_path / "b"), progress=False)
    make_scene(replace(config, output_dir=tmp_path / "c", seed=4), progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + 7 * 4 + 1
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a/images/frame_00000.png").read_bytes() != (tmp_path / "c/images/frame_00000.png").read_bytes()


@pytest.fixture(scope="module")
def layout_scenes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("layouts")
    return {
        layout: make_scene(
            MakeSceneConfig(
                output_dir=root / layout, num_objects=12, num_views=12, resolution=48, seed=4, camera_layout=layout
            ),
            progress=False,
        )
        for layout in CAMERA_LAYOUTS
    }


@pytest.mark.parametrize("layout", CAMERA_LAYOUTS)
def test_every_layout_sees_the_objects(layout_scenes, layout):
    scene = layout_scenes[layout]
    meta = _meta(scene)
    assert meta["generator"].get("camera_layout", "dome") == layout
    seen, shares = set(), []
    for frame in meta["frames"]:
        gt = read_label_map(scene / frame[GT_INSTANCE_KEY])
        ids, pixels = np.unique(gt[gt > 0], return_counts=True)
        visible = set(ids[pixels >= 4].tolist())  # a few pixels at 48 px: an object a segmenter could find
        seen |= visible
        shares.append(len(visible) / 12)
        depth = np.asarray(Image.open(scene / frame["depth_file_path"]))
        assert (depth[gt > 0] > 0).all()
    assert len(seen) >= 10, f"{layout}: only {len(seen)} of 12 objects in any view"
    assert np.mean(shares) >= 0.3, f"{layout}: views see {np.mean(shares):.0%} of the objects on average"


@pytest.mark.parametrize("layout", ["forward", "walkthrough", "panorama"])
def test_inside_layouts_hit_a_surface_with_every_ray(layout_scenes, layout):
    """Walls stand around the rug, so no pixel lacks a depth (the sky over the walls has one too)."""
    scene = layout_scenes[layout]
    for frame in _meta(scene)["frames"]:
        depth = np.asarray(Image.open(scene / frame["depth_file_path"]), dtype=np.float64) / 1000
        assert (depth > 0).all() and depth.max() < 20


def test_layouts_place_the_cameras_as_captured(layout_scenes):
    def poses(layout):
        return np.array([f["transform_matrix"] for f in _meta(layout_scenes[layout])["frames"]])

    rug = _meta(layout_scenes["dome"])["generator"]["floor_size"] / 2 + 0.15  # half the rug's side
    forward = poses("forward")
    axes = -forward[:, :3, 2]
    assert (axes @ axes.mean(0) / np.linalg.norm(axes.mean(0)) > np.cos(np.radians(8))).all()  # near-parallel
    assert np.ptp(forward[:, :3, 3], axis=0).max() < 1.7 and (forward[:, 1, 3] < -rug).all()  # a grid at one edge
    walk = poses("walkthrough")
    assert np.allclose(walk[:, 2, 3], 1.5, atol=0.16)  # eye height
    heading = np.degrees(np.arctan2(-walk[:, 1, 2], -walk[:, 0, 2]))
    assert len(set(np.floor((heading + 180) / 90).tolist())) == 4  # looking all around
    assert np.linalg.norm(walk[:, :2, 3], axis=1).max() < rug  # walking over the rug
    panorama = poses("panorama")
    assert np.ptp(panorama[:, :3, 3], axis=0).max() < 0.1  # one point
    heading = np.sort(np.degrees(np.arctan2(-panorama[:, 1, 2], -panorama[:, 0, 2])))
    assert np.diff(np.concatenate([heading, heading[:1] + 360])).max() < 70  # no gap in the turn
    # the same seed gives the same objects in every layout
    objects = [_meta(layout_scenes[layout])["scene_objects"] for layout in CAMERA_LAYOUTS]
    assert all(o == objects[0] for o in objects)


@pytest.mark.parametrize("segmenter", ["felzenszwalb", "slic"])
def test_classical_segmenter(tmp_path, segmenter):
    scene = make_scene(
        MakeSceneConfig(output_dir=tmp_path / "s", num_objects=8, num_views=3, resolution=64, segmenter=segmenter),
        progress=False,
    )
    frame = _meta(scene)["frames"][1]
    ids, semantics = read_label_map(scene / frame[SEGMENTS_KEY]), read_label_map(scene / frame[SEMANTICS_KEY])
    gt = read_label_map(scene / frame[GT_INSTANCE_KEY])
    confidence = read_confidence(scene / frame["confidence_path"])
    assert ((ids > 0) == (semantics == 1)).all()
    # Kept segments lie mostly on objects, cover most object pixels, and split objects into several parts.
    assert ((ids > 0) & (gt > 0)).sum() > 0.6 * (ids > 0).sum()
    assert ((ids > 0) & (gt > 0)).sum() > 0.5 * (gt > 0).sum()
    assert len(np.unique(ids[ids > 0])) > len(np.unique(gt[gt > 0]))
    assert 0 <= confidence.min() and confidence.max() <= 1 and confidence.mean() > 0.5


@pytest.mark.parametrize(
    "flags, flag",
    [
        (dict(num_objects=0), "--num-objects"),
        (dict(num_objects=100_000), "--num-objects"),
        (dict(num_objects=300, floor_size=1.0), "--floor-size"),
        (dict(resolution=8), "--resolution"),
        (dict(floor_size=100.0), "--floor-size"),
        (dict(seed=-1), "--seed"),
        (dict(num_views=0), "--num-views"),
        (dict(miss_rate=-0.1), "--miss-rate"),
        (dict(over_segment_rate=1.5), "--over-segment-rate"),
        (dict(under_segment_rate=float("nan")), "--under-segment-rate"),
        (dict(false_positives=-1.0), "--false-positives"),
        (dict(boundary_px=50.0), "--boundary-px"),
        (dict(segmenter="slic", miss_rate=0.2), "--segmenter"),
        (dict(camera_layout="walkthrough", view_width=3.0), "--view-width"),
    ],
)
def test_bad_flags_fail_clearly_and_leave_nothing(tmp_path, flags, flag):
    out = tmp_path / "scene"
    with pytest.raises(MakeSceneError, match=flag):
        make_scene(MakeSceneConfig(output_dir=out, **{"num_views": 3, "resolution": 32, **flags}), progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".scene")], "temporary folder left behind"


def test_non_empty_output_needs_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    monkeypatch.setattr(sys, "argv", ["cl-make-scene", "--output-dir", str(out), "--num-objects", "3"])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().out
    assert (out / "keep.txt").read_text() == "mine"
    config = MakeSceneConfig(output_dir=out, num_objects=3, num_views=2, resolution=32, overwrite=True)
    make_scene(config, progress=False)
    assert not (out / "keep.txt").exists() and (out / "transforms.json").is_file()


def test_noise_config_rejects_bad_rates():
    with pytest.raises(ValueError, match="--miss-rate"):
        SegmenterNoiseConfig(miss_rate=1.01)
