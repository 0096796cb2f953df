"""cl-bench's benchmarks run end to end on tiny settings (their figures are measured, not asserted)."""

from __future__ import annotations

import json

import pytest
import yaml
from nerfstudio.utils import writer

from contrastive_lift_ns.benchmarks import lift, speed
from contrastive_lift_ns.benchmarks.lift import LiftBenchmark
from contrastive_lift_ns.benchmarks.loss_cost import LossCostBenchmark
from contrastive_lift_ns.method_configs import METHODS


def test_the_loss_cost_benchmark_times_every_loss_for_every_label_count(capsys):
    rows = LossCostBenchmark(labels=(2, 8), images=2, rays_per_image=64, repeats=1, device="cpu").main()
    assert [row["labels_per_image"] for row in rows] == [2, 8]
    for row in rows:
        assert all(row[key] > 0 for key in ("slow_fast_ms", "vanilla_ms", "linear_assignment_ms"))
    assert "labels/image" in capsys.readouterr().out


@pytest.mark.slow
def test_the_lift_benchmark_trains_evaluates_and_reports_every_method(tmp_path, monkeypatch):
    tiny = {"views": 6, "resolution": 16, "scene_steps": 3, "instance_steps": 12, "small": True}
    tiny["cluster_pixels"] = 1_000  # the scenes hold 1,536 pixels: the small preset's 20,000 only costs rendering
    monkeypatch.setitem(lift.PROFILES, "quick", tiny)
    out = tmp_path / "lift"
    benchmark = LiftBenchmark(
        output_dir=out,
        profile="quick",
        objects=(2, 3),
        hard_objects=(2,),
        depth_objects=(2,),
        layouts=("forward",),
        layout_objects=2,
        seeds=(0, 1),
        sweep_min_cluster_size=(5,),
        workers=2,
    )  # two scenes at a time, in parallel processes
    summary = benchmark.main()

    trained = [r for r in summary["rows"] if not r.get("swept")]
    scenes = [
        (2, "hard", False, "dome"),
        (2, "realistic", False, "dome"),
        (2, "realistic", False, "forward"),
        (2, "realistic", True, "dome"),
        (3, "realistic", False, "dome"),
    ]
    expected = [(n, seed, *scene, m) for seed in (0, 1) for n, *scene in scenes for m in METHODS]
    keyed = [(r["objects"], r["seed"], r["preset"], r["depth"], r["layout"], r["method"]) for r in trained]
    assert keyed == expected
    keys = ("pq_scene_things", "pq_frame", "segmenter_pq_frame", "miou", "psnr", "min_cluster_size", "step_ms")
    for row in trained:
        assert 0.0 <= row["pq_scene"] <= 1.0 and row["num_objects_gt"] >= 1 and row["step_ms"] > 0
        assert all(key in row for key in keys)
        assert 0 <= row["num_objects_matched"] <= min(row["num_objects_gt"], row["num_objects_pred"])
    swept = [r for r in summary["rows"] if r.get("swept")]
    assert len(swept) == 2 and all(r["min_cluster_size"] == 5 and r["seed"] == 0 for r in swept)  # the first seed
    assert json.loads((out / "results.json").read_text())["rows"] == summary["rows"]
    table = (out / "results.md").read_text()
    assert all(f"| {method} |" in table for method in METHODS)
    assert "±" in table and "seeds: [0, 1]" in table and "| 5 |" in table  # spread over seeds, and the sweep
    assert "2 objects (hard)" in table and "2 objects (realistic, depth)" in table and "Matched objects" in table
    assert "2 objects (realistic, forward)" in table
    assert (out / "pq_scene.png").stat().st_size > 0 and (out / "speed.png").stat().st_size > 0
    configs = list(out.glob("runs/**/config.yml"))
    assert len(configs) == len(trained) + len(trained) // len(METHODS)  # every method's run, and each scene's
    for path in configs:  # they open where the folder ended up, not in the temporary folder it was written in
        run = yaml.load(path.read_text(), Loader=yaml.Loader)
        assert run.pipeline.datamanager.data.is_dir() and run.get_base_dir().is_dir(), path


@pytest.mark.slow
def test_the_speed_benchmark_reports_every_figure_the_issue_asks_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(speed, "_in_subprocess", lambda fn, *args: fn(*args))  # same code, no process start-up
    for name, empty in (("EVENT_WRITERS", []), ("EVENT_STORAGE", []), ("GLOBAL_BUFFER", {})):
        monkeypatch.setattr(writer, name, empty)  # nerfstudio's writers are global: keep these runs' out of later tests
    output = tmp_path / "speed.json"
    tiny = speed.SpeedBenchmark(
        output_path=output, rays_per_step=128, steps=2, warmup=1, objects=(2, 3), resolution=16,
        cluster_train_steps=12, cluster_pixels=(300,), render_sizes=(16,), processes=(2,),
    )  # fmt: skip
    results = tiny.main()

    ratio = results["ratio"]
    assert ratio["nerfacto_step_ms"] > 0 and ratio["contrastive_lift_step_ms"] > 0 and ratio["ratio"] > 0
    assert ratio["nerfacto_peak_mb"] > 0 and ratio["contrastive_lift_peak_mb"] > 0
    stage = [(row["method"], row["objects"]) for row in results["instance_stage"]]
    assert stage == [(method, n) for method in METHODS for n in (2, 3)]
    assert all(row["step_ms"] > 0 and row["peak_mb"] > 0 for row in results["instance_stage"])
    assert [row["pixels"] for row in results["clustering"]] == [300]
    assert results["rendering"][0]["size"] == 16 and results["rendering"][0]["fps"] > 0
    (scaling,) = results["scaling"]  # two gloo processes training together
    assert scaling["processes"] == 2 and scaling["backend"] == "gloo" and scaling["steps_per_second"] > 0
    assert json.loads(output.read_text())["ratio"] == ratio
    printed = capsys.readouterr().out
    assert (
        "contrastive-lift / nerfacto" in printed
        and "| linear-assignment-lift |" in printed
        and "| 2 | gloo |" in printed
    )
