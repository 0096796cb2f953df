"""cl-bench's benchmarks run end to end on tiny settings (their figures are measured, not asserted)."""

from __future__ import annotations

import json

import pytest
from nerfstudio.utils import writer

from contrastive_lift_ns.benchmarks import speed
from contrastive_lift_ns.benchmarks.lift import METHODS, LiftBenchmark
from contrastive_lift_ns.benchmarks.loss_cost import LossCostBenchmark


def test_the_loss_cost_benchmark_times_every_loss_for_every_label_count(capsys):
    rows = LossCostBenchmark(labels=(2, 8), images=2, rays_per_image=64, repeats=1, device="cpu").main()
    assert [row["labels_per_image"] for row in rows] == [2, 8]
    for row in rows:
        assert all(row[key] > 0 for key in ("slow_fast_ms", "vanilla_ms", "linear_assignment_ms"))
    assert "labels/image" in capsys.readouterr().out


@pytest.mark.slow
def test_the_lift_benchmark_trains_evaluates_and_reports_every_method(tmp_path, monkeypatch):
    tiny = {"views": 6, "resolution": 16, "scene_steps": 3, "instance_steps": 12, "small": True}
    monkeypatch.setattr(LiftBenchmark, "profile", lambda self: tiny)
    out = tmp_path / "lift"
    summary = LiftBenchmark(output_dir=out, objects=(2, 3), workers=2).main()  # two scenes in parallel processes

    assert [(row["objects"], row["method"]) for row in summary["rows"]] == [(n, m) for n in (2, 3) for m in METHODS]
    for row in summary["rows"]:
        assert 0.0 <= row["pq_scene"] <= 1.0 and row["num_objects_gt"] >= 1 and row["step_ms"] > 0
    assert json.loads((out / "results.json").read_text())["rows"] == summary["rows"]
    table = (out / "results.md").read_text()
    assert all(f"| {method} |" in table for method in METHODS)
    assert (out / "pq_scene.png").stat().st_size > 0 and (out / "speed.png").stat().st_size > 0


@pytest.mark.slow
def test_the_speed_benchmark_reports_every_figure_the_issue_asks_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(speed, "_in_subprocess", lambda fn, *args: fn(*args))  # same code, no process start-up
    for name, empty in (("EVENT_WRITERS", []), ("EVENT_STORAGE", []), ("GLOBAL_BUFFER", {})):
        monkeypatch.setattr(writer, name, empty)  # nerfstudio's writers are global: keep these runs' out of later tests
    output = tmp_path / "speed.json"
    tiny = speed.SpeedBenchmark(
        output_path=output, rays_per_step=128, steps=2, warmup=1, objects=(2, 3), resolution=16,
        cluster_train_steps=12, cluster_pixels=(300,), render_sizes=(16,),
    )  # fmt: skip
    results = tiny.main()

    ratio = results["ratio"]
    assert ratio["nerfacto_step_ms"] > 0 and ratio["contrastive_lift_step_ms"] > 0 and ratio["ratio"] > 0
    assert ratio["nerfacto_peak_mb"] > 0 and ratio["contrastive_lift_peak_mb"] > 0
    stage = [(row["method"], row["objects"]) for row in results["instance_stage"]]
    assert stage == [(method, n) for method in speed.LOSSES for n in (2, 3)]
    assert all(row["step_ms"] > 0 and row["peak_mb"] > 0 for row in results["instance_stage"])
    assert [row["pixels"] for row in results["clustering"]] == [300]
    assert results["rendering"][0]["size"] == 16 and results["rendering"][0]["fps"] > 0
    assert json.loads(output.read_text())["ratio"] == ratio
    printed = capsys.readouterr().out
    assert "contrastive-lift / nerfacto" in printed and "| linear-assignment-lift |" in printed
