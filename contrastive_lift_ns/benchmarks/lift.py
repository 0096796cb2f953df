"""The paper's two Messy Rooms claims, side by side on ``cl-make-scene`` scenes.

- Table 2: PQ^scene against the number of objects for ``contrastive-lift`` (slow-fast), its vanilla loss and
  ``linear-assignment-lift`` (Panoptic Lifting), with the 2D segmenter's own PQ for reference.
- Table 6: training speed of the instance stage against the number of objects.

Protocol (the paper's): for each scene, geometry, colour and semantics are trained once (no instance loss);
then each method trains only its instance field from that checkpoint, everything else frozen, so the
instance loss is the only difference. ``linear-assignment-lift`` gets as many instance logits as the scene
has objects (its required upper bound). With several workers, scenes train in parallel processes; each step
time is then that of one process on its share of the CPU.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from nerfstudio.utils.eval_utils import eval_setup

from contrastive_lift_ns.benchmarks.timing import machine, quiet, train_timed
from contrastive_lift_ns.data.scene_format import atomic_output_dir, atomic_write_json
from contrastive_lift_ns.evaluation.scene_evaluation import evaluate
from contrastive_lift_ns.method_configs import trainer_config
from contrastive_lift_ns.scripts.make_scene import MakeSceneConfig, make_scene

METHODS: Dict[str, str] = {
    "contrastive-lift": "slow-fast",
    "contrastive-lift-vanilla": "vanilla",
    "linear-assignment-lift": "linear-assignment",
}
PAPER_TABLE_2 = {  # Old Room environment, PQ^scene
    "linear-assignment-lift": {25: 73.2, 50: 69.9, 100: 64.3, 500: 51.0},
    "contrastive-lift-vanilla": {25: 74.1, 50: 71.2, 100: 63.6, 500: 49.7},
    "contrastive-lift": {25: 78.9, 50: 75.8, 100: 69.1, 500: 55.0},
}


@dataclass
class LiftBenchmark:
    """Table 2 and Table 6 of the paper on generated scenes."""

    output_dir: Path = Path("bench-results/lift")
    """Results folder: results.md, results.json, pq_scene.png, speed.png and the scenes and runs."""
    quick: bool = False
    """CPU profile (≤ 30 min on 2 cores): small scenes and few steps, same structure as the full run."""
    objects: Tuple[int, ...] = (25, 50, 100, 500)
    """Numbers of objects, one scene each."""
    seed: int = 0
    """Scene seed."""
    overwrite: bool = False
    """Replace a non-empty output folder."""
    workers: int = 0
    """Scenes trained at once, each in its own process with an equal share of the CPU threads. 0: one per CPU
    core with --quick (a small model uses one core well), else 1 (one GPU)."""

    def profile(self) -> Dict[str, Any]:
        """Scene and training sizes of the chosen profile."""
        if self.quick:
            return {"views": 32, "resolution": 64, "scene_steps": 800, "instance_steps": 800, "small": True}
        return {"views": 100, "resolution": 256, "scene_steps": 20000, "instance_steps": 10000, "small": False}

    def main(self) -> Dict[str, Any]:
        return _run(self)


def _run(config: LiftBenchmark) -> Dict[str, Any]:
    profile = config.profile()
    workers = config.workers or ((os.cpu_count() or 1) if config.quick else 1)
    workers = min(workers, len(config.objects))
    with atomic_output_dir(config.output_dir, overwrite=config.overwrite) as folder:
        jobs = [
            (count, folder, profile, config.seed, max(1, (os.cpu_count() or 1) // workers)) for count in config.objects
        ]
        if workers == 1:
            per_scene = [_scene_rows(*job) for job in jobs]
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                per_scene = pool.starmap(_scene_rows, jobs, chunksize=1)
        rows = [row for scene_rows in per_scene for row in scene_rows]
        summary = {
            "command": " ".join(sys.argv),
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "profile": profile,
            "config": {k: str(v) for k, v in asdict(config).items()},
            "rows": rows,
        }
        atomic_write_json(folder / "results.json", summary)
        (folder / "results.md").write_text(_markdown(summary))
        _plots(rows, folder)
    print(_markdown(summary))
    return summary


def _scene_rows(count: int, folder: Path, profile: Dict[str, Any], seed: int, threads: int) -> List[Dict[str, Any]]:
    """One scene: generated, trained without instances, then each method's instance stage on it."""
    torch.set_num_threads(threads)
    scene = make_scene(
        MakeSceneConfig(
            output_dir=folder / f"scene-{count}",
            num_objects=count,
            num_views=profile["views"],
            resolution=profile["resolution"],
            seed=seed,
        ),
        progress=False,
    )
    checkpoint = _train_scene(scene, folder / "runs" / f"{count}-scene", profile)
    rows = []
    for method in METHODS:
        rows.append(_instance_stage(scene, checkpoint, method, count, folder / "runs", profile))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _base(method: str, profile: Dict[str, Any]):
    # A registered method name: eval_setup looks the run's method up to rebuild its datamanager.
    config = trainer_config(method, METHODS[method], small=profile["small"])
    config.pipeline.model.clustering.recluster_every = 0  # cluster once, at the end
    return config


def _train_scene(scene: Path, output: Path, profile: Dict[str, Any]) -> Path:
    """Geometry, colour and semantics, with no instance loss."""
    config = quiet(_base("contrastive-lift", profile), output)
    config.pipeline.datamanager.data = scene
    config.pipeline.model.instance_loss_start_step = 10**9
    return train_timed(config, profile["scene_steps"]).checkpoint


def _instance_stage(
    scene: Path, checkpoint: Path, method: str, count: int, output: Path, profile: Dict[str, Any]
) -> Dict[str, Any]:
    config = quiet(_base(method, profile), output / f"{count}-{method}")
    config.pipeline.datamanager.data = scene
    model = config.pipeline.model
    model.freeze_scene, model.scene_checkpoint = True, checkpoint
    model.semantic_loss_start_step = model.instance_loss_start_step = 0
    model.max_instances = count
    timed = train_timed(config, profile["instance_steps"])
    pipeline = eval_setup(config.get_base_dir() / "config.yml", test_mode="test")[1]
    metrics = evaluate(pipeline)
    return {
        "objects": count,
        "method": method,
        "pq_scene": metrics["pq_scene"],
        "pq_frame": metrics["pq_frame"],
        "segmenter_pq_frame": metrics["segmenter_pq_frame"],
        "num_objects_pred": metrics["num_objects_pred"],
        "num_objects_gt": metrics["num_objects_gt"],
        "step_ms": 1000 * timed.mean_step,
        "iterations_per_second": 1 / timed.mean_step,
    }


def _markdown(summary: Dict[str, Any]) -> str:
    rows = summary["rows"]
    counts = sorted({r["objects"] for r in rows})
    lines = [
        f"Machine: {summary['machine']}; date: {summary['date']}; profile: {summary['profile']}",
        f"Command: `{summary['command']}`",
        "",
        "PQ^scene (×100) against the number of objects (paper's Table 2, Old Room, in brackets):",
        "",
        "| method | " + " | ".join(f"{n} objects" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for method in METHODS:
        cells = []
        for n in counts:
            row = next(r for r in rows if r["objects"] == n and r["method"] == method)
            paper = PAPER_TABLE_2[method].get(n)
            cells.append(f"{100 * row['pq_scene']:.1f}" + (f" ({paper})" if paper else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    segmenter = [next(r for r in rows if r["objects"] == n)["segmenter_pq_frame"] for n in counts]
    lines.append("| 2D segmenter, per-frame PQ | " + " | ".join(f"{100 * s:.1f}" for s in segmenter) + " |")
    lines += ["", "Instance-stage training speed, iterations/s (ms/step), paper's Table 6 in its caption:", ""]
    lines += ["| method | " + " | ".join(f"{n} objects" for n in counts) + " |", "|---|" + "---|" * len(counts)]
    for method in METHODS:
        cells = []
        for n in counts:
            row = next(r for r in rows if r["objects"] == n and r["method"] == method)
            cells.append(f"{row['iterations_per_second']:.2f} ({row['step_ms']:.0f} ms)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(rows: List[Dict[str, Any]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, label, name in (("pq_scene", "PQ^scene", "pq_scene.png"), ("iterations_per_second", "it/s", "speed.png")):
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for method in METHODS:
            points = sorted((r["objects"], r[key]) for r in rows if r["method"] == method)
            axes.plot(*zip(*points), marker="o", label=method)
        axes.set_xscale("log")
        axes.set_xlabel("objects in the scene")
        axes.set_ylabel(label)
        axes.legend()
        figure.tight_layout()
        figure.savefig(folder / name, dpi=120)
        plt.close(figure)
