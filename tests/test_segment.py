"""cl-segment: 2D segments for a scene of posed images, from Felzenszwalb, SLIC, Mask2Former or SAM, in place or
into a new scene, at the images' size or downscaled.

The Mask2Former and SAM tests build tiny models with random weights from their configs, offline; a few weights are
scaled so that random inputs still give masks, because untrained models score every mask too low to keep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig
from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.scene_format import read_confidence, read_label_map
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.method_configs import contrastive_lift_small
from contrastive_lift_ns.scripts import segment as segment_script
from contrastive_lift_ns.scripts.segment import SegmentConfig, SegmentError, segment
from contrastive_lift_ns.segmenters import SegmenterError, Segments
from contrastive_lift_ns.segmenters.classical import Felzenszwalb
from contrastive_lift_ns.segmenters.mask2former import _panoptic_maps, _thing_labels
from contrastive_lift_ns.segmenters.sam import _instance_maps

from .conftest import train_in_process, write_flat_scene

CL_SEGMENT = Path(sys.executable).parent / "cl-segment"
MAP_KEYS = ("segments_path", "semantics_path", "confidence_path")


def _frames(scene: Path) -> list:
    return json.loads((scene / "transforms.json").read_text())["frames"]


def _posed_images_only(scene: Path) -> None:
    """Drops the generated 2D segments, as if the scene came from ns-process-data (ground truth stays)."""
    meta = json.loads((scene / "transforms.json").read_text())
    for frame in meta["frames"]:
        for key in MAP_KEYS:
            del frame[key]
    (scene / "transforms.json").write_text(json.dumps(meta))
    for folder in ("segments", "semantics", "confidence"):
        shutil.rmtree(scene / folder)


def _load_split(scene: Path, split: str) -> ContrastiveLiftDataset:
    outputs = ContrastiveLiftDataParserConfig(data=scene).setup().get_dataparser_outputs(split)
    return ContrastiveLiftDataset(outputs)


@pytest.mark.slow
def test_felzenszwalb_segments_posed_images_that_then_train(tmp_path):
    scene = make_scene(
        MakeSceneConfig(output_dir=tmp_path / "scene", num_objects=6, num_views=16, resolution=48), progress=False
    )
    _posed_images_only(scene)
    original = (scene / "transforms.json").read_bytes()

    segment(SegmentConfig(data=scene, segmenter="felzenszwalb"), progress=False)

    assert (scene / "transforms.json.bak").read_bytes() == original
    meta = json.loads((scene / "transforms.json").read_text())
    assert meta["semantic_classes"] == ["background", "object"] and meta["thing_classes"] == [1]
    for frame in meta["frames"]:
        name = Path(frame["file_path"]).name
        assert frame["segments_path"] == f"cl-segment-felzenszwalb/segments/{name}"
        segments = read_label_map(scene / frame["segments_path"])
        assert segments.shape == (48, 48) and segments.min() >= 1 and len(np.unique(segments)) > 3
        assert (read_label_map(scene / frame["semantics_path"]) == 1).all()
        assert (read_confidence(scene / frame["confidence_path"]) == 1).all()
    item = _load_split(scene, "test")[0]
    assert item["segments"].shape == (48, 48, 1) and "gt_instance" in item

    clustering = replace(contrastive_lift_small.config.pipeline.model.clustering, num_pixels=2000)
    config = train_in_process(
        scene,
        tmp_path / "out",
        max_steps=30,
        semantic_loss_start_step=5,
        instance_loss_start_step=10,
        clustering=clustering,
    )
    assert (config.parent / "nerfstudio_models/step-000000029.ckpt").exists()  # steps count from 0


def test_the_command_keeps_the_first_backup_and_the_file_mode(tmp_path):
    scene = write_flat_scene(tmp_path / "scene")
    original = (scene / "transforms.json").read_bytes()
    os.chmod(scene / "transforms.json", 0o644)
    for _ in range(2):
        result = subprocess.run(
            [str(CL_SEGMENT), "--data", str(scene), "--segmenter", "felzenszwalb"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert "kept the earlier backup transforms.json.bak" in " ".join(result.stdout.split())
    assert (scene / "transforms.json.bak").read_bytes() == original
    assert (scene / "transforms.json").stat().st_mode & 0o777 == 0o644
    assert all(frame["segments_path"].startswith("cl-segment-felzenszwalb/") for frame in _frames(scene))


def test_a_failure_midway_leaves_the_scene_as_it_was(tmp_path):
    scene = write_flat_scene(tmp_path / "scene")
    (scene / "images/2.png").write_bytes(b"not a png")
    before = sorted(p.relative_to(scene) for p in scene.rglob("*"))
    original = (scene / "transforms.json").read_bytes()
    with pytest.raises(SegmentError, match=r"images/2\.png: unreadable image"):
        segment(SegmentConfig(data=scene, segmenter="felzenszwalb", batch_size=1), progress=False)
    assert (scene / "transforms.json").read_bytes() == original
    assert sorted(p.relative_to(scene) for p in scene.rglob("*")) == before


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"model": "some/model"}, "--model does not apply to --segmenter felzenszwalb"),
        ({"score_threshold": 1.5}, r"--score-threshold must lie in \[0, 1\]"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
    ],
)
def test_bad_flags_are_named(flat_scene, flags, message):
    with pytest.raises(SegmentError, match=message):
        segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb", **flags), progress=False)


def test_a_missing_image_is_named_before_anything_is_written(flat_scene):
    (flat_scene / "images/1.png").unlink()
    with pytest.raises(SegmentError, match=r"frame 'images/1\.png'.*file not found"):
        segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb"), progress=False)
    assert not (flat_scene / "transforms.json.bak").exists()


def test_weights_out_of_reach_give_a_clear_error_and_write_nothing(flat_scene):
    pytest.importorskip("transformers")
    original = (flat_scene / "transforms.json").read_bytes()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(CL_SEGMENT), "--data", str(flat_scene), "--segmenter", "mask2former", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    message = " ".join(result.stdout.split())
    assert "facebook/mask2former-swin-large-coco-panoptic" in message and "--model DIR" in message
    assert (flat_scene / "transforms.json").read_bytes() == original
    assert sorted(p.name for p in flat_scene.iterdir()) == ["images", "segments", "transforms.json"]


def test_a_model_folder_that_does_not_exist_is_named(flat_scene):
    with pytest.raises(SegmenterError, match="--model ./no-such-folder: not a folder of sam weights"):
        segment(SegmentConfig(data=flat_scene, segmenter="sam", model="./no-such-folder"), progress=False)


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory) -> Path:
    """Random Mask2Former on a tiny Swin, with labels 0, 1 (things) and 2 (stuff), saved offline."""
    pytest.importorskip("transformers")
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    labels = {0: "cup", 1: "book", 2: "table"}
    backbone = SwinConfig(
        embed_dim=32, depths=[1] * 4, num_heads=[1] * 4, window_size=4, image_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=1, dim_feedforward=32, num_queries=4,
        id2label=labels, label2id={v: k for k, v in labels.items()}, thing_ids=[0, 1],
    )  # fmt: skip
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config)
    with torch.no_grad():  # a confident "cup" class and crisp masks
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[0] = 20.0
        for parameter in model.model.transformer_module.decoder.mask_predictor.mask_embedder.parameters():
            parameter.mul_(30.0)
    folder = tmp_path_factory.mktemp("mask2former")
    model.save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> Path:
    """Random SAM with a 2-layer ViT on 64 px inputs, saved offline."""
    pytest.importorskip("transformers")
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8,
        window_size=4, global_attn_indexes=[1], num_pos_feats=8, initializer_range=0.02,
    )  # fmt: skip
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
    )
    torch.manual_seed(0)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    with torch.no_grad():  # large mask logits (stable masks) and a predicted IoU of 0.9
        model.mask_decoder.upscale_conv2.weight.mul_(1e3)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1e3)
        model.mask_decoder.iou_prediction_head.proj_out.weight.zero_()
        model.mask_decoder.iou_prediction_head.proj_out.bias.fill_(0.9)
    folder = tmp_path_factory.mktemp("sam")
    model.save_pretrained(folder)
    SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_mask2former_writes_panoptic_maps_with_the_models_classes(tiny_mask2former, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scene = write_flat_scene(tmp_path / "scene", frames=5, size=24)
    config = SegmentConfig(
        data=scene, segmenter="mask2former", model=str(tiny_mask2former), device="cpu", batch_size=2,
        score_threshold=0.0,
    )  # fmt: skip
    segment(config, progress=False)

    meta = json.loads((scene / "transforms.json").read_text())
    assert meta["semantic_classes"] == ["void", "cup", "book", "table"]
    assert meta["thing_classes"] == [1, 2] and meta["void_class"] == 0
    for frame in meta["frames"]:
        segments = read_label_map(scene / frame["segments_path"])
        semantics = read_label_map(scene / frame["semantics_path"])
        confidence = read_confidence(scene / frame["confidence_path"])
        assert segments.shape == semantics.shape == confidence.shape == (24, 24)
        assert segments.max() >= 1 and (semantics[segments > 0] == 1).all()  # the confident "cup" segments
        assert np.isin(semantics, [0, 1, 2, 3]).all() and 0.0 <= confidence.min() <= confidence.max() <= 1.0
    item = _load_split(scene, "train")[0]
    assert item["semantics"].dtype == torch.int64 and item["confidence"].dtype == torch.float32


def test_sam_writes_instances_of_one_object_class(tiny_sam, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scene = write_flat_scene(tmp_path / "scene", frames=3, size=24)
    config = SegmentConfig(
        data=scene, segmenter="sam", model=str(tiny_sam), device="cpu", score_threshold=0.5, points_per_side=4
    )
    segment(config, progress=False)

    meta = json.loads((scene / "transforms.json").read_text())
    assert meta["semantic_classes"] == ["background", "object"] and meta["thing_classes"] == [1]
    assert "void_class" not in meta
    for frame in meta["frames"]:
        segments = read_label_map(scene / frame["segments_path"])
        confidence = read_confidence(scene / frame["confidence_path"])
        assert segments.shape == (24, 24) and segments.max() >= 1
        assert np.array_equal(read_label_map(scene / frame["semantics_path"]), (segments > 0).astype(int))
        assert np.allclose(confidence[segments > 0], 0.9, atol=1 / 255)
    assert _load_split(scene, "train")[0]["segments"].max() >= 1


def test_panoptic_results_become_thing_ids_classes_and_scores():
    segmentation = np.array([[1, 1, 2], [3, 3, 0]])
    info = [
        {"id": 1, "label_id": 0, "score": 0.9},  # a thing
        {"id": 2, "label_id": 2, "score": 0.6},  # stuff
        {"id": 3, "label_id": 1, "score": 0.7},  # another thing
    ]
    maps = _panoptic_maps(segmentation, info, np.array([True, True, False]))
    assert maps.ids.tolist() == [[1, 1, 0], [3, 3, 0]]
    assert maps.semantics.tolist() == [[1, 1, 3], [2, 2, 0]]
    assert np.allclose(maps.confidence, [[0.9, 0.9, 0.6], [0.7, 0.7, 0.0]])
    empty = _panoptic_maps(np.full((2, 2), -1), [], np.array([True]))  # no segment at all
    assert not empty.ids.any() and not empty.semantics.any() and not empty.confidence.any()


def test_thing_classes_come_from_the_config_or_the_coco_panoptic_label_set():
    assert _thing_labels({"thing_ids": [2]}, ["a", "b", "c"], "m") == [2]
    coco = ["person"] + [f"label{i}" for i in range(1, 133)]
    assert _thing_labels({}, coco, "m") == list(range(80))
    with pytest.raises(SegmenterError, match='add "thing_ids"'):
        _thing_labels({}, ["a", "b"], "m")


def test_overlapping_sam_masks_keep_the_smaller_one_on_top():
    big = np.ones((2, 3), dtype=bool)
    small = np.zeros((2, 3), dtype=bool)
    small[0, 0] = True
    maps = _instance_maps([small, big], np.array([0.5, 1.2]), (2, 3))
    assert maps.ids.tolist() == [[1, 2, 2], [2, 2, 2]]
    assert maps.confidence.tolist() == [[0.5, 1.0, 1.0], [1.0, 1.0, 1.0]]  # scores are clipped to [0, 1]
    assert (maps.semantics == 1).all()


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_dir_writes_a_new_scene_that_reaches_the_original_images(flat_scene, tmp_path):
    before = _snapshot(flat_scene)
    out = tmp_path / "new" / "scene"
    written = segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb", output_dir=out), progress=False)

    assert written == out / "transforms.json" and _snapshot(flat_scene) == before
    source = json.loads((flat_scene / "transforms.json").read_text())
    meta = json.loads(written.read_text())
    assert "label_downscale_factor" not in meta and sorted(p.name for p in out.iterdir()) == [
        "cl-segment-felzenszwalb",
        "transforms.json",
    ]
    for old, new in zip(source["frames"], meta["frames"]):
        assert not Path(new["file_path"]).is_absolute()
        assert (out / new["file_path"]).resolve() == (flat_scene / old["file_path"]).resolve()
        assert read_label_map(out / new["segments_path"]).shape == (16, 16)
    assert [(out / name).resolve() for name in meta["train_filenames"]] == [
        (flat_scene / name).resolve() for name in source["train_filenames"]
    ]
    outputs = ContrastiveLiftDataParserConfig(data=out).setup().get_dataparser_outputs("train")
    assert [Path(name).resolve() for name in outputs.image_filenames] == [
        (flat_scene / name).resolve() for name in source["train_filenames"]
    ]


@pytest.mark.parametrize("factor", [2, 4])
def test_downscale_factor_writes_smaller_maps_and_the_downscaled_images(tmp_path, factor):
    scene = write_flat_scene(tmp_path / "scene", size=18)
    out = tmp_path / "out"
    segment(
        SegmentConfig(data=scene, segmenter="felzenszwalb", output_dir=out, downscale_factor=factor), progress=False
    )

    meta = json.loads((out / "transforms.json").read_text())
    assert meta["label_downscale_factor"] == factor and (meta["w"], meta["h"]) == (18, 18)  # cameras at full size
    sizes = {2: 9, 4: 4}  # int(18 / N), as ffmpeg's scale=iw/N:ih/N in ns-process-data
    for scale in [2, 4][: factor.bit_length() - 1]:
        assert sorted(p.name for p in (out / f"images_{scale}").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
        assert all(Image.open(p).size == (sizes[scale],) * 2 for p in (out / f"images_{scale}").iterdir())
    for frame in meta["frames"]:
        assert read_label_map(out / frame["segments_path"]).shape == (sizes[factor],) * 2
    assert not (out / "images_8").exists() and not list(scene.glob("images_*"))


def test_a_downscaled_scene_loads_at_its_factor(tmp_path):
    scene = write_flat_scene(tmp_path / "scene", size=16)
    out = tmp_path / "out"
    segment(SegmentConfig(data=scene, segmenter="felzenszwalb", output_dir=out, downscale_factor=2), progress=False)
    item = ContrastiveLiftDataset(
        ContrastiveLiftDataParserConfig(data=out, downscale_factor=2).setup().get_dataparser_outputs("train")
    )[0]
    assert item["image"].shape[:2] == item["segments"].shape[:2] == (8, 8)


def test_the_scenes_own_downscaled_images_are_segmented_and_copied(tmp_path):
    scene = write_flat_scene(tmp_path / "scene", frames=2, size=32)
    (scene / "images_2").mkdir()
    for frame in _frames(scene):
        name = Path(frame["file_path"]).name
        left_right = np.zeros((32, 32, 3), np.uint8)
        left_right[:, 16:] = 255
        Image.fromarray(left_right).save(scene / "images" / name)
        top_bottom = np.zeros((16, 16, 3), np.uint8)
        top_bottom[8:] = (0, 0, 255)
        Image.fromarray(top_bottom).save(scene / "images_2" / name)
    out = tmp_path / "out"
    segment(SegmentConfig(data=scene, segmenter="felzenszwalb", output_dir=out, downscale_factor=2), progress=False)

    for frame in json.loads((out / "transforms.json").read_text())["frames"]:
        name = Path(frame["file_path"]).name
        assert (out / "images_2" / name).read_bytes() == (scene / "images_2" / name).read_bytes()
        segments = read_label_map(out / frame["segments_path"])
        top, bottom = np.unique(segments[:4]), np.unique(segments[-4:])  # the halves of images_2, not of images
        assert len(top) == len(bottom) == 1 and top != bottom


def test_downscaling_in_place_records_the_factor_and_warns_without_downscaled_images(flat_scene, capsys):
    segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb", downscale_factor=2), progress=False)
    meta = json.loads((flat_scene / "transforms.json").read_text())
    assert meta["label_downscale_factor"] == 2
    assert all(read_label_map(flat_scene / f["segments_path"]).shape == (8, 8) for f in meta["frames"])
    assert "images_2 lacks 4 of the images" in " ".join(capsys.readouterr().out.split())

    segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb"), progress=False)  # back to full size
    assert "label_downscale_factor" not in json.loads((flat_scene / "transforms.json").read_text())


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_read_only_scene_is_refused_before_segmenting(flat_scene, read_only):
    transforms = flat_scene / "transforms.json"
    os.chmod(transforms, 0o644)
    target = transforms if read_only == "file" else flat_scene
    mode = 0o444 if read_only == "file" else 0o555
    original = transforms.read_bytes()
    before = sorted(p.name for p in flat_scene.iterdir())
    os.chmod(target, mode)
    try:
        # As root, os.access allows any write; the missing write bits still make the scene read-only.
        with pytest.raises(SegmentError, match=f"{transforms} is .*read-only.*--output-dir"):
            segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb"), progress=False)
        assert target.stat().st_mode & 0o777 == mode
    finally:
        os.chmod(target, 0o755 if read_only == "folder" else 0o644)
    assert transforms.read_bytes() == original and sorted(p.name for p in flat_scene.iterdir()) == before


def test_a_file_this_user_may_not_write_is_refused(flat_scene, monkeypatch):
    transforms = flat_scene / "transforms.json"
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != transforms and access(path, mode, **kw))
    with pytest.raises(SegmentError, match="is read-only"):
        segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb"), progress=False)
    assert not list(flat_scene.glob("cl-segment-*")) and not (flat_scene / "transforms.json.bak").exists()


def test_slic_segments_into_superpixels(flat_scene):
    segment(SegmentConfig(data=flat_scene, segmenter="slic"), progress=False)
    for frame in _frames(flat_scene):
        assert frame["segments_path"].startswith("cl-segment-slic/")
        assert len(np.unique(read_label_map(flat_scene / frame["segments_path"]))) > 3
        assert (read_label_map(flat_scene / frame["semantics_path"]) == 1).all()


def test_more_than_255_segments_are_written_as_16_bit_maps(flat_scene, monkeypatch):
    class OneSegmentPerPixel(Felzenszwalb):
        def segment(self, images):
            return [
                Segments(
                    ids=np.arange(1, image.shape[0] * image.shape[1] + 1).reshape(image.shape[:2]),
                    semantics=np.ones(image.shape[:2], np.uint8),
                    confidence=np.ones(image.shape[:2], np.float32),
                )
                for image in images
            ]

    monkeypatch.setattr(segment_script, "_load", lambda config, device: OneSegmentPerPixel())
    segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb"), progress=False)
    path = flat_scene / _frames(flat_scene)[0]["segments_path"]
    assert Image.open(path).mode.startswith("I;16") and read_label_map(path).max() == 256


def test_output_dir_and_downscaling_problems_are_named_before_segmenting(flat_scene, tmp_path):
    (flat_scene / "more").mkdir()
    shutil.copy(flat_scene / "images/0.png", flat_scene / "more/0.png")
    meta = json.loads((flat_scene / "transforms.json").read_text())
    meta["frames"].append({**meta["frames"][0], "file_path": "more/0.png"})
    (flat_scene / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(SegmentError, match=r"images/0\.png and .*more/0\.png share the file name '0\.png'"):
        segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb", downscale_factor=2), progress=False)

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    problems = {
        "not empty; pass --overwrite": {"output_dir": full},
        "holds .*transforms.json of the source scene": {"output_dir": tmp_path, "overwrite": True},
        "--overwrite applies only with --output-dir": {"overwrite": True},
    }
    for message, flags in problems.items():
        with pytest.raises(SegmentError, match=message):
            segment(SegmentConfig(data=flat_scene, segmenter="felzenszwalb", **flags), progress=False)
    assert (full / "keep.txt").read_text() == "mine" and not list(flat_scene.glob("cl-segment-*"))
