"""The real capture, end to end as a user runs it: cl-segment, ns-train, cl-eval, ns-render and cl-export on a
downscaled subset of ../shared/data/fox (photographs posed by COLMAP, portrait, with lens distortion, no ground
truth). The capture's licence allows research and evaluation use only, so it is read in place and nothing made
from it is written inside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig

FOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "fox"
BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FOX.is_dir(), reason=f"the real capture is not at {FOX} (../shared beside the repository)"),
]


def _run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=900)


def test_a_photographed_scene_segments_trains_evaluates_renders_and_exports(tmp_path):
    source = tmp_path / "capture"
    source.mkdir()
    meta = json.loads((FOX / "transforms.json").read_text())
    meta["frames"] = [{**f, "file_path": str(FOX / f["file_path"])} for f in meta["frames"][::4]]  # 13 of 50
    (source / "transforms.json").write_text(json.dumps(meta))

    scene = tmp_path / "scene"
    result = _run(BIN / "cl-segment", "--data", source, "--output-dir", scene, "--segmenter", "felzenszwalb",
                  "--downscale-factor", "8")  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    segments = np.asarray(
        Image.open(scene / json.loads((scene / "transforms.json").read_text())["frames"][0]["segments_path"])
    )
    assert segments.shape == (240, 135) and len(np.unique(segments)) > 20  # portrait, over-segmented
    outputs = ContrastiveLiftDataParserConfig(data=scene, downscale_factor=8).setup().get_dataparser_outputs("train")
    assert (outputs.cameras.distortion_params != 0).any()  # COLMAP's k1, k2, p1, p2 reach the cameras
    assert int(outputs.cameras.height[0]) == 240 and int(outputs.cameras.width[0]) == 135

    train = [
        BIN / "ns-train", "contrastive-lift-small", "--data", scene, "--output-dir", tmp_path / "out",
        "--experiment-name", "fox", "--timestamp", "run", "--vis", "tensorboard",
        "--viewer.quit-on-train-completion", "True", "--max-num-iterations", "300",
        "--pipeline.model.semantic-loss-start-step", "50", "--pipeline.model.instance-loss-start-step", "100",
        "--pipeline.model.clustering.num-pixels", "8000", "--pipeline.model.clustering.recluster-every", "0",
        "contrastive-lift-data", "--downscale-factor", "8",
    ]  # fmt: skip
    result = _run(*train)
    assert result.returncode == 0, result.stderr[-3000:]
    config = tmp_path / "out/fox/contrastive-lift-small/run/config.yml"

    result = _run(BIN / "cl-eval", "--load-config", config, "--output-path", tmp_path / "metrics.json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["psnr"] > 10 and metrics["missing_ground_truth"] == ["gt_instance_path"]
    # The score itself is checked on generated scenes (tests/test_instances.py): 300 steps on 13 photographs give
    # depths too rough for the 1 % occlusion check (held-out views overlapped on 0.2-3.7 % of their pixels), and
    # one of the 13 views is held out. Here cl-eval must report it without ground truth.
    assert {"consistency", "segmenter_consistency", "consistency_pairs", "num_objects_pred"} <= set(metrics)

    renders = tmp_path / "renders"
    result = _run(BIN / "ns-render", "dataset", "--load-config", config, "--split", "test",
                  "--rendered-output-names", "instance", "--output-path", renders)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert any(renders.rglob("*.jpg")) or any(renders.rglob("*.png"))

    export = tmp_path / "export"
    result = _run(BIN / "cl-export", "--load-config", config, "--output-dir", export, "--num-points", "20000",
                  "--min-points", "20")  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = json.loads((export / "objects.json").read_text())
    assert table["num_points"] > 1000 and all(view.endswith(".jpg") for o in table["objects"] for view in o["views"])
